// The broker suite: one behavioural suite run against every broker (the in-process one is the
// reference), then what only a shared bus has: several nodes on one Redis, and Redis faults.
//
// Redis comes from REDIS_URL (default redis://127.0.0.1:6379). Without it these tests are skipped
// loudly outside CI and fail under CI=true. Each run uses its own key and channel prefix.

import { randomBytes } from 'node:crypto';
import * as Net from 'node:net';

import * as Basic from '@hapi/basic';
import * as Code from '@hapi/code';
import type * as Hapi from '@hapi/hapi';
import * as Lab from '@hapi/lab';
import { createClient } from '@redis/client';

import * as Pulse from '../lib/index';
import type { Broker, BrokerSink, PublishEnvelope } from '../lib/index';
import { RedisBroker } from '../lib/redis';
import type { RedisBrokerOptions } from '../lib/redis';
import { Nes, PrivateRedis, Proxy, freePort, redisAvailable, redisServerAvailable, redisUrl, server, skipWithoutRedis, url, until, wait } from './helpers';
import type { NesClient } from './helpers';

const { expect } = Code;
const lab = Lab.script();
export { lab };
const { after, before, describe, it } = lab;

const runPrefix = `pulse-test:${process.pid}:${randomBytes(4).toString('hex')}:`;


const ci = process.env.CI === 'true';
skipWithoutRedis('Redis broker tests');

let prefixCounter = 0;
const uniquePrefix = (): string => `${runPrefix}${++prefixCounter}:`;

const users: Record<string, { scope: string[] }> = {
    john: { scope: ['user-john'] },
    jane: { scope: ['user-jane'] },
    jim: { scope: ['user-jim'] }
};

const basic = async (srv: Hapi.Server): Promise<void> => {

    await srv.register(Basic);
    srv.auth.strategy('default', 'basic', {
        validate: (_request: unknown, username: string, password: string) => {

            const user = users[username];
            if (!user || password !== 'secret') {
                return { isValid: false, credentials: null };
            }

            return { isValid: true, credentials: { user: username, scope: user.scope } };
        }
    });
    srv.auth.default('default');
};

const header = (username: string): string => 'Basic ' + Buffer.from(`${username}:secret`).toString('base64');

const connect = async (srv: Hapi.Server, user?: string): Promise<NesClient> => {

    const client = new Nes.Client(url(srv));
    await client.connect(user ? { auth: { headers: { authorization: header(user) } } } : {});
    return client;
};

// A sink that records what a broker delivers, for broker-level tests.
const recorder = (): BrokerSink & { delivered: PublishEnvelope[]; broadcasts: unknown[]; logs: { tags: string[]; data: unknown }[]; lostPaths: string[] } => {

    const sink = {
        lostPaths: [] as string[],
        delivered: [] as PublishEnvelope[],
        broadcasts: [] as unknown[],
        logs: [] as { tags: string[]; data: unknown }[],
        deliver: (envelope: PublishEnvelope) => {

            sink.delivered.push(envelope);
        },
        broadcast: (envelope: { message: unknown }) => {

            sink.broadcasts.push(envelope.message);
        },
        lost: (path: string) => {

            sink.lostPaths.push(path);
        },
        log: (tags: string[], data: unknown) => {

            sink.logs.push({ tags, data });
        }
    };

    return sink;
};

interface Flavour {
    name: string;
    skip: boolean;
    make: (prefix?: string) => Broker;
}

const flavours: Flavour[] = [
    { name: 'memory', skip: false, make: () => new Pulse.MemoryBroker() },
    { name: 'redis', skip: !redisAvailable, make: (prefix = uniquePrefix()) => new RedisBroker({ url: redisUrl, prefix }) }
];

const admin = createClient({ url: redisUrl });

const cleanup = async (): Promise<void> => {

    const keys: string[] = [];
    for await (const batch of admin.scanIterator({ MATCH: `${runPrefix}*`, COUNT: 1000 })) {
        keys.push(...batch);
    }

    if (keys.length) {
        await admin.del(keys);
    }
};

if (redisAvailable) {
    before(async () => {

        await admin.connect();
    });

    after(async () => {

        await cleanup();
        expect(await admin.keys(`${runPrefix}*`)).to.equal([]);
        admin.destroy();
    });
}
else if (ci) {
    describe('redis', () => {

        it('is required under CI', () => {

            throw new Error(`CI=true but no Redis answers at ${redisUrl}`);
        });
    });
}

for (const flavour of flavours) {
    describe(`${flavour.name} broker`, { skip: flavour.skip }, () => {

        it('delivers a publish once to the subscribers of that exact path', async () => {

            const srv = await server({ broker: flavour.make() });
            srv.subscription('/item/{id}');
            await srv.start();

            const client = await connect(srv);
            const five: unknown[] = [];
            const six: unknown[] = [];
            await client.subscribe('/item/5', (message: unknown) => five.push(message));
            await client.subscribe('/item/6', (message: unknown) => six.push(message));

            await srv.publish('/item/5', { a: 1 });
            await srv.publish('/item/6', 'six');
            await srv.publish('/item/7', 'nobody');
            await until(() => five.length === 1 && six.length === 1);
            await wait(50);
            expect(five).to.equal([{ a: 1 }]);
            expect(six).to.equal(['six']);

            await client.disconnect();
            await srv.stop();
        });

        it('rejects a publish or broadcast that cannot be serialised, and logs a filter error with its path', async () => {

            const srv = await server({ broker: flavour.make() });
            const logs: unknown[] = [];
            srv.events.on('log', (event) => event.tags.includes('filter') && logs.push([event.tags, (event.data as any).path]));
            srv.subscription('/plain');
            srv.subscription('/buggy', { filter: (_path, message) => (message === 'bug' ? (null as any).field : true) });
            await srv.start();

            const client = await connect(srv);
            const got: unknown[] = [];
            client.onUpdate = (message: unknown) => got.push(message);
            await client.subscribe('/plain', (message: unknown) => got.push(message));
            await client.subscribe('/buggy', (message: unknown) => got.push(message));

            const cycle: Record<string, unknown> = {};
            cycle.self = cycle;
            await expect(srv.publish('/plain', cycle)).to.reject(TypeError);
            await expect(srv.broadcast(cycle)).to.reject(TypeError);

            // The filter runs where the socket is: the in-process broker's publish rejects; through Redis it is logged
            const buggy = srv.publish('/buggy', 'bug');
            if (flavour.name === 'memory') {
                await expect(buggy).to.reject(TypeError);
            }
            else {
                await buggy;
            }

            await srv.publish('/plain', 'after');
            await until(() => got.length === 1);
            expect(got).to.equal(['after']);
            expect(logs).to.equal([[['pulse', 'filter', 'error'], '/buggy']]);

            await client.disconnect();
            await srv.stop();
        });

        it('runs filters with the socket credentials and the internal option, and per-socket overrides', async () => {

            const srv = await server({ auth: { type: 'direct' }, broker: flavour.make() }, 'pulse', basic);
            const seen: unknown[] = [];
            srv.subscription('/room/{id}', {
                filter: (_path, message, options) => {

                    seen.push({ user: options.credentials?.user, internal: options.internal, params: options.params });
                    if (options.credentials?.user === 'jane') {
                        return { override: { ...message, for: 'jane' } };
                    }

                    return (options.internal as { allow: string[] }).allow.includes(options.credentials?.user);
                }
            });
            await srv.start();

            const got: Record<string, unknown[]> = { john: [], jane: [], jim: [] };
            const clients = await Promise.all(Object.keys(got).map((user) => connect(srv, user)));
            await Promise.all(clients.map((client, i) => client.subscribe('/room/a', (message: unknown) => got[Object.keys(got)[i]!]!.push(message))));

            await srv.publish('/room/a', { text: 'hi' }, { internal: { allow: ['john'] } });
            await until(() => got.john!.length === 1 && got.jane!.length === 1);
            await wait(50);
            expect(got).to.equal({ john: [{ text: 'hi' }], jane: [{ text: 'hi', for: 'jane' }], jim: [] });
            expect(seen).to.have.length(3);
            expect(seen).to.contain({ user: 'jim', internal: { allow: ['john'] }, params: { id: 'a' } });

            await Promise.all(clients.map((client) => client.disconnect()));
            await srv.stop();
        });

        it('targets users on publish and broadcast', async () => {

            const srv = await server({ auth: { type: 'direct', index: true }, broker: flavour.make() }, 'pulse', basic);
            srv.subscription('/news', { auth: { index: true } });
            await srv.start();

            const john = await connect(srv, 'john');
            const jane = await connect(srv, 'jane');
            const got: unknown[] = [];
            john.onUpdate = (message: unknown) => got.push(['john', 'update', message]);
            jane.onUpdate = (message: unknown) => got.push(['jane', 'update', message]);
            await john.subscribe('/news', (message: unknown) => got.push(['john', 'pub', message]));
            await jane.subscribe('/news', (message: unknown) => got.push(['jane', 'pub', message]));

            await srv.publish('/news', 'for jane', { user: 'jane' });
            await srv.broadcast('to john', { user: 'john' });
            await srv.broadcast('to all');
            await until(() => got.length === 4);
            await wait(50);
            expect(got).to.have.length(4);
            expect(got).to.contain([['jane', 'pub', 'for jane'], ['john', 'update', 'to john'], ['john', 'update', 'to all'], ['jane', 'update', 'to all']]);

            await john.disconnect();
            await jane.disconnect();
            await srv.stop();
        });

        it('asks the broker for a path when its first local subscriber arrives and leaves it after the last', async () => {

            const broker = flavour.make();
            const calls: string[] = [];
            const subscribe = broker.subscribe.bind(broker);
            const unsubscribe = broker.unsubscribe.bind(broker);
            broker.subscribe = (path) => {

                calls.push(`+${path}`);
                return subscribe(path);
            };

            broker.unsubscribe = (path) => {

                calls.push(`-${path}`);
                return unsubscribe(path);
            };

            const srv = await server({ broker });
            srv.subscription('/item/{id}');
            await srv.start();

            const a = await connect(srv);
            const b = await connect(srv);
            const got: unknown[] = [];
            await a.subscribe('/item/1', (message: unknown) => got.push(['a', message]));
            await b.subscribe('/item/1', (message: unknown) => got.push(['b', message]));
            expect(calls).to.equal(['+/item/1']);

            await a.unsubscribe('/item/1');
            await srv.publish('/item/1', 'one');
            await until(() => got.length === 1);
            expect(got).to.equal([['b', 'one']]);
            expect(calls).to.equal(['+/item/1']);

            await b.disconnect();
            await until(() => calls.length === 2);
            expect(calls).to.equal(['+/item/1', '-/item/1']);
            await srv.publish('/item/1', 'nobody');
            await wait(50);
            expect(got).to.have.length(1);

            await a.disconnect();
            await srv.stop();
        });

        it('stops and starts again', async () => {

            const srv = await server({ broker: flavour.make() });
            srv.subscription('/item/{id}');
            await srv.start();
            await srv.stop();
            await srv.start();

            const client = await connect(srv);
            const got: unknown[] = [];
            client.onUpdate = (message: unknown) => got.push(message);
            await client.subscribe('/item/1', (message: unknown) => got.push(message));
            await srv.publish('/item/1', 'again');
            await srv.broadcast('everyone');
            await until(() => got.length === 2);
            expect(got).to.equal(['again', 'everyone']);

            await client.disconnect();
            await srv.stop();
        });

        it('numbers the publishes of a path that keeps history and recovers what was missed', async () => {

            const broker = flavour.make();
            const sink = recorder();
            await broker.start(sink);
            await broker.subscribe('/h');

            const history = { size: 10, ttl: 60000 };
            const empty = await broker.recover('/h', null, history);
            expect(empty).to.equal({ recovered: true, entries: [], position: { epoch: empty.position.epoch, offset: 0 } });

            // Nothing is stored before the first publish, which starts the history under its own epoch
            let epoch = '';
            for (let i = 1; i <= 4; ++i) {
                const envelope: PublishEnvelope = { path: '/h', message: { i }, internal: 'x' };
                await broker.publish(envelope, history);
                epoch ||= envelope.position!.epoch;
                expect(envelope.position).to.equal({ epoch, offset: i });
            }

            expect(epoch).to.not.equal(empty.position.epoch);
            await until(() => sink.delivered.length === 4);
            expect(sink.delivered.map((envelope) => envelope.position!.offset)).to.equal([1, 2, 3, 4]);
            expect(sink.delivered[0]).to.equal({ path: '/h', message: { i: 1 }, internal: 'x', position: { epoch, offset: 1 } });

            const position = { epoch, offset: 4 };
            expect(await broker.recover('/h', empty.position, history)).to.equal({ recovered: true, entries: sink.delivered, position });
            expect(await broker.recover('/h', { epoch: empty.position.epoch, offset: 1 }, history)).to.equal({ recovered: false, position });
            expect(await broker.recover('/h', null, history)).to.equal({ recovered: true, entries: [], position });
            expect(await broker.recover('/h', { epoch: position.epoch, offset: 4 }, history)).to.equal({ recovered: true, entries: [], position });
            expect(await broker.recover('/h', { epoch: position.epoch, offset: 0 }, history)).to.equal({ recovered: true, entries: sink.delivered, position });
            expect(await broker.recover('/h', { epoch: position.epoch, offset: 2 }, history)).to.equal({ recovered: true, entries: sink.delivered.slice(2), position });

            // Another epoch, a future offset
            expect(await broker.recover('/h', { epoch: 'other', offset: 2 }, history)).to.equal({ recovered: false, position });
            expect(await broker.recover('/h', { epoch: position.epoch, offset: 5 }, history)).to.equal({ recovered: false, position });

            // Publishes in flight together
            await Promise.all([broker.publish({ path: '/h', message: 5 }, history), broker.publish({ path: '/h', message: 6 }, history)]);
            await until(() => sink.delivered.length === 6);
            expect(sink.delivered.map((envelope) => envelope.message)).to.equal([{ i: 1 }, { i: 2 }, { i: 3 }, { i: 4 }, 5, 6]);

            // A path that never had a publish
            const never = await broker.recover('/never', null, history);
            const again = await broker.recover('/never', never.position, history);
            expect(again).to.equal({ recovered: true, entries: [], position: { epoch: again.position.epoch, offset: 0 } });

            // Without history a publish has no position
            const plain: PublishEnvelope = { path: '/h', message: 'plain' };
            await broker.publish(plain);
            expect(plain.position).to.not.exist();

            await broker.stop();
        });

        it('refuses recovery beyond the history size and after its ttl', async () => {

            const broker = flavour.make();
            await broker.start(recorder());

            const sized = { size: 3, ttl: 60000 };
            for (let i = 1; i <= 5; ++i) {
                await broker.publish({ path: '/sized', message: i }, sized);
            }

            const { position } = await broker.recover('/sized', null, sized);
            expect(position.offset).to.equal(5);
            expect(await broker.recover('/sized', { epoch: position.epoch, offset: 1 }, sized)).to.equal({ recovered: false, position });
            const recovered = await broker.recover('/sized', { epoch: position.epoch, offset: 2 }, sized);
            expect(recovered.recovered).to.be.true();
            expect((recovered as { entries: PublishEnvelope[] }).entries.map((entry) => entry.message)).to.equal([3, 4, 5]);

            const short = { size: 10, ttl: 100 };
            await broker.publish({ path: '/short', message: 1 }, short);
            const before = await broker.recover('/short', null, short);
            await wait(200);
            const late = await broker.recover('/short', { epoch: before.position.epoch, offset: 0 }, short);
            expect(late.recovered).to.be.false();

            await broker.stop();
        });

        it('refuses entries older than the ttl while newer ones keep the path alive', async () => {

            const broker = flavour.make();
            await broker.start(recorder());

            // Margins of 200 ms on either side (a loaded machine stretches waits), and done before the memory
            // broker's first sweep (1 s) so that its recovery, not the sweep, finds 'a' too old.
            const history = { size: 10, ttl: 600 };
            await broker.publish({ path: '/aging', message: 'a' }, history);
            await wait(400);
            await broker.publish({ path: '/aging', message: 'b' }, history);
            await wait(400);                                                     // 'a' is past the ttl, 'b' is not

            const { position } = await broker.recover('/aging', null, history);
            expect(position.offset).to.equal(2);
            expect(await broker.recover('/aging', { epoch: position.epoch, offset: 0 }, history)).to.equal({ recovered: false, position });
            const recent = await broker.recover('/aging', { epoch: position.epoch, offset: 1 }, history);
            expect(recent.recovered).to.be.true();
            expect((recent as { entries: PublishEnvelope[] }).entries.map((entry) => entry.message)).to.equal(['b']);

            await broker.publish({ path: '/aging', message: 'c' }, history);     // trims 'a'
            const next = { epoch: position.epoch, offset: 3 };
            expect(await broker.recover('/aging', { epoch: position.epoch, offset: 0 }, history)).to.equal({ recovered: false, position: next });
            const both = await broker.recover('/aging', { epoch: position.epoch, offset: 1 }, history);
            expect((both as { entries: PublishEnvelope[] }).entries.map((entry) => entry.message)).to.equal(['b', 'c']);

            await broker.stop();
        });

        it('expires the whole history of a path after its ttl and starts it again under a new epoch', async () => {

            const broker = flavour.make();
            const sink = recorder();
            await broker.start(sink);

            // Gaps well under the ttl, so that a loaded machine does not expire the path between publishes
            const history = { size: 10, ttl: 400 };

            // Publishes keep a path alive past its ttl
            const envelopes: PublishEnvelope[] = [];
            for (let i = 1; i <= 4; ++i) {
                const envelope: PublishEnvelope = { path: '/expiring', message: i };
                await broker.publish(envelope, history);
                envelopes.push(envelope);
                await wait(120);
            }

            const old = envelopes[3]!.position!;
            expect(envelopes.map((envelope) => envelope.position)).to.equal([1, 2, 3, 4].map((offset) => ({ epoch: old.epoch, offset })));

            // Then nothing for longer than the ttl: a new epoch, offsets from 1, the old position cannot be recovered
            await wait(600);
            const fresh: PublishEnvelope = { path: '/expiring', message: 'fresh' };
            await broker.publish(fresh, history);
            expect(fresh.position!.epoch).to.not.equal(old.epoch);
            expect(fresh.position!.offset).to.equal(1);
            expect(await broker.recover('/expiring', old, history)).to.equal({ recovered: false, position: fresh.position! });
            expect(await broker.recover('/expiring', { epoch: old.epoch, offset: 1 }, history)).to.equal({ recovered: false, position: fresh.position! });
            expect(await broker.recover('/expiring', { epoch: fresh.position!.epoch, offset: 0 }, history)).to.equal({ recovered: true, entries: [fresh], position: fresh.position! });

            // A subscriber before the first publish stores nothing; resuming from its position gets what came since...
            const empty = await broker.recover('/empty', null, history);
            expect(empty.position.offset).to.equal(0);
            const first: PublishEnvelope = { path: '/empty', message: 1 };
            await broker.publish(first, history);
            expect(first.position!.offset).to.equal(1);
            expect(await broker.recover('/empty', empty.position, history)).to.equal({ recovered: true, entries: [first], position: first.position! });

            // ... unless it is older than the ttl: a history may have come and gone since
            const idle = await broker.recover('/idle', null, history);
            await wait(600);
            const after = await broker.recover('/idle', idle.position, history);
            expect(after.recovered).to.be.false();
            expect(after.position.epoch).to.not.equal(idle.position.epoch);
            expect(after.position.offset).to.equal(0);
            const next: PublishEnvelope = { path: '/idle', message: 1 };
            await broker.publish(next, history);
            expect(next.position!.offset).to.equal(1);

            await broker.stop();
        });
    });
}

// ---- Only a shared bus: several nodes, one Redis ----

const killConnection = async (broker: RedisBroker, which: 'pub' | 'sub'): Promise<void> => {

    const list = await admin.sendCommand(['CLIENT', 'LIST']) as string;
    const line = list.split('\n').find((item) => item.includes(` name=hapi-pulse:${broker.id}:${which} `));
    expect(line).to.exist();
    const id = /^id=(\d+) /.exec(line!)![1]!;
    await admin.sendCommand(['CLIENT', 'KILL', 'ID', id]);
};

const connectionsOf = async (broker: RedisBroker): Promise<number> => {

    const list = await admin.sendCommand(['CLIENT', 'LIST']) as string;
    return list.split('\n').filter((item) => item.includes(` name=hapi-pulse:${broker.id}:`)).length;
};

const eventually = async (check: () => Promise<boolean>, timeout = 2000): Promise<void> => {

    const end = Date.now() + timeout;
    while (!await check()) {
        if (Date.now() > end) {
            throw new Error('Timed out');
        }

        await wait(10);
    }
};

describe('redis broker across nodes', { skip: !redisAvailable }, () => {

    const nodes = async (count: number, options: Record<string, unknown> = {}, setup?: (srv: Hapi.Server) => void | Promise<void>, brokerOptions: RedisBrokerOptions = {}) => {

        const prefix = uniquePrefix();
        const list: { srv: Hapi.Server; broker: RedisBroker }[] = [];
        for (let i = 0; i < count; ++i) {
            const broker = new RedisBroker({ url: redisUrl, prefix, ...brokerOptions });
            const srv = await server({ ...options, broker }, 'pulse', setup);
            list.push({ srv, broker });
        }

        return { list, prefix };
    };

    it('delivers a publish on node A to subscribers on node B with B\'s filters, credentials and overrides, once', async () => {

        const { list: [a, b] } = await nodes(2, { auth: { type: 'direct' } }, basic);
        const filtered: unknown[] = [];
        for (const { srv } of [a!, b!]) {
            srv.subscription('/room/{id}', {
                filter: (_path, message, options) => {

                    filtered.push({ port: srv.info.port, user: options.credentials?.user, internal: options.internal });
                    if (options.credentials?.user === 'jane') {
                        return { override: { ...message, for: 'jane' } };
                    }

                    return options.credentials?.user !== 'jim';
                }
            });
            await srv.start();
        }

        const got: unknown[] = [];
        const onA = await connect(a!.srv, 'john');
        const onB = await Promise.all(['john', 'jane', 'jim'].map((user) => connect(b!.srv, user)));
        await onA.subscribe('/room/1', (message: unknown) => got.push(['A john', message]));
        await Promise.all(onB.map((client, i) => client.subscribe('/room/1', (message: unknown) => got.push([`B ${['john', 'jane', 'jim'][i]}`, message]))));

        await a!.srv.publish('/room/1', { n: 1 }, { internal: { from: 'A' } });
        await b!.srv.publish('/room/1', { n: 2 });
        await until(() => got.length === 6);
        await wait(100);
        expect(got).to.have.length(6);
        expect(got).to.contain([
            ['A john', { n: 1 }], ['B john', { n: 1 }], ['B jane', { n: 1, for: 'jane' }],
            ['A john', { n: 2 }], ['B john', { n: 2 }], ['B jane', { n: 2, for: 'jane' }]
        ]);
        expect(filtered).to.contain({ port: b!.srv.info.port, user: 'jim', internal: { from: 'A' } });
        expect(filtered).to.contain({ port: a!.srv.info.port, user: 'john', internal: { from: 'A' } });
        expect(filtered).to.have.length(8);

        await onA.disconnect();
        await Promise.all(onB.map((client) => client.disconnect()));
        await a!.srv.stop();
        await b!.srv.stop();
    });

    it('still publishes to the other nodes while a node stops (server.stop() under load), and refuses publishes once stopped', async () => {

        const { list: [a, b] } = await nodes(2);
        for (const { srv } of [a!, b!]) {
            srv.subscription('/h', { history: { size: 10, ttl: 60000 } });
            srv.subscription('/plain');
            await srv.start();
        }

        const client = await connect(b!.srv);
        const got: unknown[] = [];
        const updates: unknown[] = [];
        client.onUpdate = (message: unknown) => updates.push(message);
        await client.subscribe('/h', (message: unknown) => got.push(message));
        await client.subscribe('/plain', (message: unknown) => got.push(message));

        const stopping = a!.srv.stop();
        await Promise.all([a!.srv.publish('/h', 'h'), a!.srv.publish('/plain', 'plain'), a!.srv.broadcast('update')]);
        await stopping;
        await until(() => got.length === 2 && updates.length === 1);
        expect(got).to.equal(['h', 'plain']);

        // Stopped: refused rather than taken for delivered
        await expect(a!.srv.publish('/h', 'late')).to.reject('Server stopped');
        await expect(a!.srv.broadcast('late')).to.reject('Server stopped');

        await client.disconnect();
        await b!.srv.stop();
    });

    it('broadcasts and targets users across nodes', async () => {

        const { list: [a, b] } = await nodes(2, { auth: { type: 'direct', index: true } }, basic);
        for (const { srv } of [a!, b!]) {
            srv.subscription('/news', { auth: { index: true } });
            await srv.start();
        }

        const got: unknown[] = [];
        const john = await connect(b!.srv, 'john');
        const jane = await connect(b!.srv, 'jane');
        const jim = await connect(a!.srv, 'jim');
        for (const [name, client] of [['john', john], ['jane', jane], ['jim', jim]] as const) {
            client.onUpdate = (message: unknown) => got.push([name, 'update', message]);
            await client.subscribe('/news', (message: unknown) => got.push([name, 'pub', message]));
        }

        await a!.srv.publish('/news', 'for jane', { user: 'jane' });
        await a!.srv.broadcast('to john', { user: 'john' });
        await b!.srv.broadcast('to jim', { user: 'jim' });
        await a!.srv.broadcast('to all');
        await until(() => got.length === 6);
        await wait(100);
        expect(got).to.have.length(6);
        expect(got).to.contain([
            ['jane', 'pub', 'for jane'], ['john', 'update', 'to john'], ['jim', 'update', 'to jim'],
            ['john', 'update', 'to all'], ['jane', 'update', 'to all'], ['jim', 'update', 'to all']
        ]);

        await Promise.all([john, jane, jim].map((client) => client.disconnect()));
        await a!.srv.stop();
        await b!.srv.stop();
    });

    it('subscribes in Redis only to the paths its sockets hold', async () => {

        const { list: [a, b], prefix } = await nodes(2);
        for (const { srv } of [a!, b!]) {
            srv.subscription('/item/{id}');
            await srv.start();
        }

        const channels = async () => ((await admin.sendCommand(['PUBSUB', 'CHANNELS', `${prefix}*`])) as string[]).sort();
        expect(await channels()).to.equal([`${prefix}b`]);

        const client = await connect(b!.srv);
        await client.subscribe('/item/1', () => { });
        await client.subscribe('/item/2', () => { });
        expect(await channels()).to.equal([`${prefix}b`, `${prefix}p:/item/1`, `${prefix}p:/item/2`]);
        const numsub = await admin.sendCommand(['PUBSUB', 'NUMSUB', `${prefix}p:/item/1`, `${prefix}b`]) as [string, number, string, number];
        expect(numsub).to.equal([`${prefix}p:/item/1`, 1, `${prefix}b`, 2]);

        await client.unsubscribe('/item/1');
        await eventually(async () => (await channels()).length === 2);
        expect(await channels()).to.equal([`${prefix}b`, `${prefix}p:/item/2`]);

        await client.disconnect();
        await eventually(async () => (await channels()).length === 1);
        expect(await channels()).to.equal([`${prefix}b`]);

        await a!.srv.stop();
        await b!.srv.stop();
        expect(await channels()).to.equal([]);
        expect(await connectionsOf(a!.broker)).to.equal(0);
        expect(await connectionsOf(b!.broker)).to.equal(0);
    });

    it('gives concurrent publishers on two nodes distinct increasing offsets', async () => {

        const { list: [a, b] } = await nodes(2);
        for (const { srv } of [a!, b!]) {
            srv.subscription('/h', { history: { size: 1000, ttl: 60000 } });
            await srv.start();
        }

        const client = await connect(b!.srv);
        const got: unknown[] = [];
        await client.subscribe('/h', (message: unknown) => got.push(message));

        const sink = recorder();
        const observer = new RedisBroker({ url: redisUrl, prefix: (a!.broker as any).prefix });
        await observer.start(sink);
        await observer.subscribe('/h');

        await Promise.all(Array.from({ length: 50 }, (_, i) => (i % 2 ? a : b)!.srv.publish('/h', i)));
        await until(() => sink.delivered.length === 50 && got.length === 50);
        expect(sink.delivered.map((envelope) => envelope.position!.offset)).to.equal(Array.from({ length: 50 }, (_, i) => i + 1));
        expect(new Set(sink.delivered.map((envelope) => envelope.position!.epoch)).size).to.equal(1);
        expect(got).to.equal(sink.delivered.map((envelope) => envelope.message));

        const history = { size: 1000, ttl: 60000 };
        const fromA = await a!.broker.recover('/h', { epoch: sink.delivered[0]!.position!.epoch, offset: 40 }, history);
        const fromB = await b!.broker.recover('/h', { epoch: sink.delivered[0]!.position!.epoch, offset: 40 }, history);
        expect(fromA).to.equal(fromB);
        expect(fromA).to.equal({ recovered: true, entries: sink.delivered.slice(40), position: sink.delivered[49]!.position! });

        await observer.stop();
        await client.disconnect();
        await a!.srv.stop();
        await b!.srv.stop();
    });

    it('reconnects and resubscribes after its connections are killed in the middle of a publish stream', async () => {

        const { list: [a, b] } = await nodes(2, {}, undefined, { timeout: 1000, client: { socket: { reconnectStrategy: () => 300 } } });
        const logs: string[][] = [];
        for (const { srv } of [a!, b!]) {
            srv.subscription('/stream');
            srv.events.on('log', (event) => logs.push(event.tags));
            await srv.start();
        }

        const client = await connect(b!.srv);
        const got: number[] = [];
        await client.subscribe('/stream', (message: number) => got.push(message));

        let sent = 0;
        const failures: unknown[] = [];
        let stop = false;
        const stream = (async () => {

            while (!stop) {
                await a!.srv.publish('/stream', ++sent).catch((err) => failures.push(err));
                await wait(5);
            }
        })();

        await until(() => got.length >= 10);
        await killConnection(b!.broker, 'sub');
        await until(() => logs.some((tags) => tags.includes('sub') && tags.includes('error')));
        await until(() => logs.some((tags) => tags.includes('sub') && tags.includes('ready')), 3000, 'resubscription');
        const resumedAt = sent;
        await until(() => got.some((n) => n > resumedAt + 5), 3000, 'delivery after resubscription');

        // The publishing connection: node-redis reconnects at once, a publish caught in the gap is refused
        await killConnection(a!.broker, 'pub');
        await until(() => logs.some((tags) => tags.includes('pub') && tags.includes('error')));
        const killedAt = sent;
        await until(() => got.some((n) => n > killedAt + 5), 3000, 'delivery after reconnection');
        for (const failure of failures as { isBoom: boolean; output: { statusCode: number } }[]) {
            expect(failure.isBoom).to.be.true();
            expect(failure.output.statusCode).to.equal(503);
        }

        stop = true;
        await stream;
        await until(() => got.at(-1) === sent - failures.length || got.includes(sent), 2000).catch(() => { });
        for (let i = 1; i < got.length; ++i) {
            expect(got[i]).to.be.above(got[i - 1]!);                 // in order, never twice
        }

        await client.disconnect();
        await a!.srv.stop();
        await b!.srv.stop();
    });

    it('heals the gap of a history path after its subscriber connection is killed in the middle of a publish stream', async () => {

        const { list: [a, b] } = await nodes(2, {}, undefined, { timeout: 1000, client: { socket: { reconnectStrategy: () => 300 } } });
        const logs: string[][] = [];
        for (const { srv } of [a!, b!]) {
            srv.subscription('/h', { history: { size: 1000, ttl: 60000 } });
            srv.subscription('/plain');
            srv.events.on('log', (event) => logs.push(event.tags));
            await srv.start();
        }

        const client = await connect(b!.srv);
        const got: number[] = [];
        const plain: number[] = [];
        await client.subscribe('/h', (message: number) => got.push(message));
        await client.subscribe('/plain', (message: number) => plain.push(message));

        // What B read from the stream after reconnecting: proof that there was a gap to heal
        let healed = 0;
        const caughtUp = (b!.broker as any).caughtUp.bind(b!.broker);
        (b!.broker as any).caughtUp = (path: string, last: unknown, reply: unknown[]) => {

            healed += reply.length - 2;
            return caughtUp(path, last, reply);
        };

        let sent = 0;
        const publish = () => {

            ++sent;
            return Promise.all([a!.srv.publish('/h', sent), a!.srv.publish('/plain', sent)]);
        };

        let stop = false;
        const stream = (async () => {

            while (!stop) {
                await publish();
                await wait(3);
            }
        })();

        // node-redis reconnects at once: a burst sent with the kill lands in the gap (kill again if it did not)
        const readies = () => logs.filter((tags) => tags.includes('sub') && tags.includes('ready')).length;
        await until(() => got.length >= 10);
        for (let attempt = 0; attempt < 5 && !healed; ++attempt) {
            const before = readies();
            const kill = killConnection(b!.broker, 'sub');
            await Promise.all([kill, ...Array.from({ length: 50 }, publish)]);
            const target = sent;
            await until(() => readies() > before, 3000, 'resubscription');
            await until(() => got.length >= target, 3000, 'catch-up');
        }

        expect(healed).to.be.above(0);
        const resumedAt = sent;
        await until(() => got.some((n) => n > resumedAt + 5) && plain.some((n) => n > resumedAt + 5), 3000, 'delivery after resubscription');

        stop = true;
        await stream;
        await until(() => got.length === sent && plain.at(-1) === sent, 3000, 'the last publish');
        await wait(50);

        // History path: every publish once, in order, those made during the gap included
        expect(got).to.equal(Array.from({ length: sent }, (_, i) => i + 1));
        expect(logs.some((tags) => tags.includes('gap'))).to.be.false();

        // No history: delivery resumed, in order and never twice; what was published in the gap is lost (documented)
        for (let i = 1; i < plain.length; ++i) {
            expect(plain[i]).to.be.above(plain[i - 1]!);
        }

        await client.disconnect();
        await a!.srv.stop();
        await b!.srv.stop();
    });

    it('answers a sub only once Redis confirmed it, and refuses it (503, nothing left behind) when that takes longer than the timeout', async () => {

        const proxy = await Proxy.start(Number(new URL(redisUrl).port || 6379));
        try {
            const prefix = uniquePrefix();
            const options = { timeout: 3000, client: { socket: { reconnectStrategy: () => 50 } } };
            const a = { broker: new RedisBroker({ url: proxy.url, prefix, ...options }) };
            const b = { broker: new RedisBroker({ url: redisUrl, prefix, ...options }) };
            const sockets: Hapi.Server[] = [];
            let readies = 0;
            for (const node of [a, b]) {
                const srv = await server({ broker: node.broker });
                srv.subscription('/plain/{id}');
                srv.subscription('/h/{id}', { history: { size: 10, ttl: 60000 } });
                srv.events.on('log', (event) => (readies += event.tags.includes('ready') && node === a ? 1 : 0));
                await srv.start();
                sockets.push(srv);
            }

            const [srvA, srvB] = sockets as [Hapi.Server, Hapi.Server];
            const client = await connect(srvA);
            const got: unknown[] = [];
            proxy.cut();
            await until(() => !(a.broker as any).sub.isReady, 2000, 'the cut');
            const before = readies;

            // While A cannot reach Redis, the subs wait; B's publishes after their replies reach A's socket
            const answered: string[] = [];
            const subs = ['/plain/1', '/h/1'].map((path) => client.subscribe(path, (message: unknown) => got.push(message)).then(() => answered.push(path)));
            await wait(300);
            expect(answered).to.equal([]);
            proxy.restore();
            await Promise.all(subs);
            expect(readies).to.be.above(before);
            await srvB.publish('/plain/1', 'plain');
            await srvB.publish('/h/1', 'history');
            await until(() => got.length === 2);
            expect(got).to.equal(['plain', 'history']);

            // Joining a path A already holds while its subscription is being restored: answered once it is back
            const others = [await connect(srvA), await connect(srvA)];
            proxy.cut();
            await until(() => !(a.broker as any).sub.isReady, 2000, 'the second cut');
            const joined: unknown[] = [];
            const joins = others.map((other) => other.subscribe('/plain/1', (message: unknown) => joined.push(message)).then(() => answered.push('joined')));
            await wait(300);
            expect([...answered].sort()).to.equal(['/h/1', '/plain/1']);
            proxy.restore();
            await Promise.all(joins);
            await srvB.publish('/plain/1', 'joined');
            await until(() => joined.length === 2);

            // Cut for longer than the timeout: refused, and nothing is left of the attempt
            proxy.cut();
            await until(() => !(a.broker as any).sub.isReady, 2000, 'the third cut');
            const stats = srvA.pulseStats();
            const refused = await expect(client.subscribe('/plain/2', () => { })).to.reject('Redis broker unavailable');
            expect((refused as any).statusCode).to.equal(503);
            expect(srvA.pulseStats()).to.equal(stats);
            proxy.restore();

            await client.disconnect();
            await Promise.all(others.map((other) => other.disconnect()));
            await srvA.stop();
            await srvB.stop();
        }
        finally {
            await proxy.close();
        }
    });

    it('confirms a sub only once both connections are up (they reconnect independently)', async () => {

        const broker = new RedisBroker({ url: redisUrl, prefix: uniquePrefix() });
        await broker.start(recorder());
        const pub = (broker as any).pub;

        // The publishing connection still reconnecting when Redis acknowledges the subscription: the sub waits for it
        Object.defineProperty(pub, 'isReady', { get: () => false, configurable: true });
        let confirmed = false;
        const subscribing = broker.subscribe('/a').then(() => (confirmed = true));
        pub.emit('ready');                                              // before the acknowledgement: not yet
        await until(() => (broker as any).channels.get((broker as any).channel('/a')) === true);
        await wait(20);
        expect(confirmed).to.be.false();
        const joining = broker.confirmed('/a');
        expect(joining).to.not.be.null();

        delete pub.isReady;
        pub.emit('ready');
        await Promise.all([subscribing, joining]);
        expect(broker.confirmed('/a')).to.be.null();
        await broker.stop();
    });

    it('survives a Redis restart: refuses publishes while it is down and resumes after', { skip: !redisServerAvailable }, async () => {

        const redis = await PrivateRedis.start();
        try {
            const { list: [a, b] } = await nodes(2, {}, undefined, { url: redis.url, timeout: 3000, client: { socket: { reconnectStrategy: () => 100 } } });
            let errors = 0;
            const logged: string[][] = [];
            for (const { srv } of [a!, b!]) {
                srv.subscription('/stream');
                srv.subscription('/h', { history: { size: 10, ttl: 60000 } });
                srv.events.on('log', (event) => {

                    errors += event.tags.includes('error') ? 1 : 0;
                    logged.push(event.tags);
                });
                await srv.start();
            }

            const client = await connect(b!.srv);
            const got: unknown[] = [];
            await client.subscribe('/stream', (message: unknown) => got.push(message));
            await client.subscribe('/h', (message: unknown) => got.push(message));

            await a!.srv.publish('/stream', 'before');
            await a!.srv.publish('/h', 'h before');
            await until(() => got.length === 2);
            const { position } = await a!.broker.recover('/h', null, { size: 10, ttl: 60000 });

            await redis.kill();
            await until(() => errors > 0 && !(a!.broker as any).pub.isReady);

            const refused = async (promise: Promise<unknown>) => {

                const err = await expect(promise).to.reject('Redis broker unavailable');
                expect((err as any).output.statusCode).to.equal(503);
            };

            await refused(a!.srv.publish('/stream', 'while down'));
            await refused(a!.srv.broadcast('while down'));
            await refused(a!.srv.publish('/h', 'while down'));
            await refused(a!.broker.recover('/h', position, { size: 10, ttl: 60000 }));

            // Subscribing and leaving while Redis is down: the subs are answered once it is back (within the timeout)
            const late = await connect(b!.srv);
            const lateGot: unknown[] = [];
            b!.srv.subscription('/late');
            a!.srv.subscription('/late');
            const answered: string[] = [];
            const lateSub = late.subscribe('/late', (message: unknown) => lateGot.push(message)).then(() => answered.push('/late'));
            await client.unsubscribe('/h');
            b!.srv.subscription('/late-h', { history: { size: 10, ttl: 60000 } });
            a!.srv.subscription('/late-h', { history: { size: 10, ttl: 60000 } });
            const lateHistorySub = late.subscribe('/late-h', (message: unknown) => lateGot.push(message)).then(() => answered.push('/late-h'));
            await wait(100);
            expect(answered).to.equal([]);

            await redis.restart();
            await Promise.all([lateSub, lateHistorySub]);
            const ready = (broker: RedisBroker, path: string) => (broker as any).pub.isReady && (broker as any).channels.get(`${(broker as any).prefix}p:${path}`) === true;
            await until(() => (a!.broker as any).pub.isReady && ready(a!.broker, '/h') === false && ready(b!.broker, '/stream') && ready(b!.broker, '/late'), 5000, 'reconnection');

            await a!.srv.publish('/stream', 'after');
            await a!.srv.publish('/h', 'h after');
            await a!.srv.publish('/late', 'late');
            await a!.srv.publish('/late-h', 'late h');
            await until(() => got.length === 3 && lateGot.length === 2);
            await wait(50);
            expect(got).to.equal(['before', 'h before', 'after']);
            expect(lateGot).to.equal(['late', 'late h']);

            // The history did not survive the restart: a new epoch, the old position cannot be recovered
            const recovery = await a!.broker.recover('/h', position, { size: 10, ttl: 60000 });
            expect(recovery.recovered).to.be.false();
            expect(recovery.position.epoch).to.not.equal(position.epoch);

            await client.disconnect();
            await late.disconnect();
            await a!.srv.stop();
            await b!.srv.stop();
        }
        finally {
            await redis.kill();
        }
    });

    it('bounds every wait on a Redis that stops answering', { skip: !redisServerAvailable }, async () => {

        const redis = await PrivateRedis.start();
        try {
            const broker = new RedisBroker({ url: redis.url, timeout: 300, client: { socket: { reconnectStrategy: () => 50 } } });
            const sink = recorder();
            await broker.start(sink);
            await broker.subscribe('/a');
            await broker.subscribe('/c');

            redis.signal('SIGSTOP');
            const started = Date.now();
            const err = await expect(broker.publish({ path: '/a', message: 'hung' })).to.reject(/Redis broker command failed/);
            expect((err as any).output.statusCode).to.equal(503);
            const refused = await expect(broker.subscribe('/b')).to.reject('Redis broker unavailable');     // gives up waiting, logs
            expect((refused as any).output.statusCode).to.equal(503);
            expect(Date.now() - started).to.be.within(500, 1500);
            await until(() => sink.logs.some((log) => log.tags.includes('subscribe')));

            // The timed out publish was written: it arrives when Redis answers again
            redis.signal('SIGCONT');
            await until(() => sink.delivered.length === 1);
            expect(sink.delivered[0]!.message).to.equal('hung');

            // Left while Redis is gone: the queued UNSUBSCRIBE is dropped when the broker stops
            await redis.kill();
            await until(() => !(broker as any).sub.isReady);
            await expect(broker.subscribe('/d')).to.reject('Redis broker unavailable');
            await broker.unsubscribe('/c');
            const pending = broker.subscribe('/e');
            await broker.stop();
            await expect(pending).to.reject('Redis broker stopped');
            await until(() => sink.logs.some((log) => log.tags.includes('unsubscribe')), 1000).catch(() => { });
        }
        finally {
            await redis.kill();
        }
    });

    it('fails to start when Redis cannot be reached, and stops cleanly', async () => {

        const port = await freePort();
        const broker = new RedisBroker({ url: `redis://127.0.0.1:${port}`, timeout: 300 });
        const srv = await server({ broker });
        await expect(srv.start()).to.reject(/RedisBroker cannot connect/);
        await srv.stop();
        await expect(broker.publish({ path: '/x', message: 1 })).to.reject(/Redis broker unavailable/);
        await broker.unsubscribe('/x');
    });

    it('reports Redis errors as 500 and ignores malformed messages', async () => {

        const prefix = uniquePrefix();
        const broker = new RedisBroker({ url: redisUrl, prefix });
        const sink = recorder();
        await broker.start(sink);
        await broker.subscribe('/h');
        expect(() => new RedisBroker({ timeout: 0 })).to.throw('Invalid RedisBroker timeout');
        expect(() => new RedisBroker({ timeout: 1.5 })).to.throw('Invalid RedisBroker timeout');
        expect(() => new RedisBroker(null as any)).to.throw('Invalid RedisBroker options');
        expect(() => new RedisBroker({ url: 1 as any })).to.throw('Invalid RedisBroker url');
        expect(() => new RedisBroker({ prefix: 1 as any })).to.throw('Invalid RedisBroker prefix');

        // Left before Redis acknowledged the subscription
        const subscribing = broker.subscribe('/gone');
        await broker.unsubscribe('/gone');
        await subscribing;
        await broker.publish({ path: '/gone', message: 'nobody' });

        const history = { size: 10, ttl: 60000 };
        await broker.publish({ path: '/h', message: 1 }, history);
        await broker.publish({ path: '/h', message: 2 }, history);
        expect((await broker.recover('/h', null, history)).position.offset).to.equal(2);

        await admin.set(`${prefix}m:/wrong`, 'not a hash');
        const err = await expect(broker.publish({ path: '/wrong', message: 1 }, history)).to.reject();
        expect((err as any).output.statusCode).to.equal(500);

        await admin.publish(`${prefix}p:/h`, 'garbage');
        await until(() => sink.logs.some((log) => log.tags.includes('deliver')));
        await broker.publish({ path: '/h', message: 3 });
        await until(() => sink.delivered.length === 3);
        expect(sink.delivered.map((envelope) => envelope.message)).to.equal([1, 2, 3]);

        await broker.stop();
    });

    it('resolves a publish whose own copy never comes back after the timeout', async () => {

        const prefix = uniquePrefix();
        const broker = new RedisBroker({ url: redisUrl, prefix, timeout: 200 });
        await broker.start(recorder());
        await broker.subscribe('/lost');
        await (broker as any).sub.UNSUBSCRIBE(`${prefix}p:/lost`);          // Redis forgets, the broker does not know

        // An own publish that came back settles every earlier one that did not
        await broker.subscribe('/found');
        const lost = broker.publish({ path: '/lost', message: 0 });
        await broker.publish({ path: '/found', message: 0 });
        await lost;

        const started = Date.now();
        const first = broker.publish({ path: '/lost', message: 1 });
        await wait(120);
        const second = broker.publish({ path: '/lost', message: 2 });
        await first;
        expect(Date.now() - started).to.be.within(180, 1000);               // bounded by the 200 ms timeout, not by luck
        await second;
        expect(Date.now() - started).to.be.within(300, 1500);

        await broker.stop();
    });

    // A second broker on the same keys whose publishes reach no channel: written to the history, never
    // seen live, like a publish missed while the subscription was down.
    const unseen = async (prefix: string) => {

        const ghost = new RedisBroker({ url: redisUrl, prefix });
        await ghost.start(recorder());
        (ghost as any).channel = () => `${prefix}nowhere`;
        return ghost;
    };

    it('heals a history path that had delivered nothing yet when its subscription dropped', async () => {

        const prefix = uniquePrefix();
        const history = { size: 100, ttl: 60000 };
        const broker = new RedisBroker({ url: redisUrl, prefix });
        const sink = recorder();
        await broker.start(sink);
        const ghost = await unseen(prefix);                                 // publishes that never reach the channel

        await ghost.publish({ path: '/b', message: 'before' }, history);      // before this node subscribed: not its own
        await broker.subscribe('/b', history);
        await broker.subscribe('/fresh', history);                           // no publish ever: healed from offset 1
        await ghost.publish({ path: '/b', message: 'missed-1' }, history);
        await ghost.publish({ path: '/b', message: 'missed-2' }, history);
        await ghost.publish({ path: '/fresh', message: 'missed-3' }, history);

        (broker as any).resubscribe();                                       // what the reconnection does
        await until(() => sink.delivered.length === 3);
        await broker.publish({ path: '/b', message: 'live' }, history);
        await until(() => sink.delivered.length === 4);
        expect(sink.delivered.filter((envelope) => envelope.path === '/b').map((envelope) => envelope.message)).to.equal(['missed-1', 'missed-2', 'live']);
        expect(sink.delivered.filter((envelope) => envelope.path === '/fresh').map((envelope) => envelope.message)).to.equal(['missed-3']);
        expect(sink.lostPaths).to.equal([]);

        // A path left before its baseline was read is not healed after a reconnection
        const leaving = broker.subscribe('/gone', history);
        await broker.unsubscribe('/gone');
        await leaving;
        await ghost.publish({ path: '/gone', message: 'not for us' }, history);
        (broker as any).resubscribe();
        await broker.publish({ path: '/b', message: 'after' }, history);
        await until(() => sink.delivered.length === 5);
        expect(sink.delivered.map((envelope) => envelope.message)).to.not.include('not for us');

        await ghost.stop();
        await broker.stop();
    });

    it('heals offset jumps from the stream, drops duplicates and logs the gaps it cannot heal', async () => {

        const prefix = uniquePrefix();
        const history = { size: 100, ttl: 60000 };
        const broker = new RedisBroker({ url: redisUrl, prefix });
        const sink = recorder();
        await broker.start(sink);
        await broker.subscribe('/h');
        const ghost = await unseen(prefix);
        const messages = () => sink.delivered.map((envelope) => envelope.message);
        const gaps = () => sink.logs.filter((log) => log.tags.includes('gap')).map((log) => log.data as any);
        const forget = () => admin.del([`${prefix}h:/h`, `${prefix}m:/h`]);

        // A retried command: the same position twice is delivered once
        await broker.publish({ path: '/h', message: 1 }, history);
        await admin.publish(`${prefix}p:/h`, 'x:1\n' + JSON.stringify(sink.delivered[0]));

        // Missed publishes are read from the stream when the next one shows the jump
        await ghost.publish({ path: '/h', message: 2 }, history);
        await ghost.publish({ path: '/h', message: 3 }, history);
        await broker.publish({ path: '/h', message: 4 }, history);
        expect(messages()).to.equal([1, 2, 3, 4]);
        expect(sink.delivered.map((envelope) => envelope.position!.offset)).to.equal([1, 2, 3, 4]);
        expect(gaps()).to.equal([]);

        // Trimmed: what is left is delivered, the rest is logged as lost
        for (const message of [5, 6, 7]) {
            await ghost.publish({ path: '/h', message }, history);
        }

        await admin.sendCommand(['XTRIM', `${prefix}h:/h`, 'MAXLEN', '1']);
        await broker.publish({ path: '/h', message: 8 }, history);
        expect(messages()).to.equal([1, 2, 3, 4, 7, 8]);
        const epoch = sink.delivered[0]!.position!.epoch;
        expect(gaps()).to.equal([{ path: '/h', reason: 'trimmed', since: { epoch, offset: 4 }, missed: 2 }]);

        // A new epoch that started while publishes were missed: the end of the old one is unknown, the new one is delivered
        await forget();
        await ghost.publish({ path: '/h', message: 9 }, history);
        await ghost.publish({ path: '/h', message: 10 }, history);
        await broker.publish({ path: '/h', message: 11 }, history);
        expect(messages()).to.equal([1, 2, 3, 4, 7, 8, 9, 10, 11]);
        const second = sink.delivered.at(-1)!.position!;
        expect(second).to.equal({ epoch: second.epoch, offset: 3 });
        expect(gaps()[1]).to.equal({ path: '/h', reason: 'epoch', since: { epoch, offset: 8 }, position: second });

        // A history that expired and starts again at offset 1 is no gap
        await forget();
        await broker.publish({ path: '/h', message: 12 }, history);
        expect(sink.delivered.at(-1)!.position!.offset).to.equal(1);

        // History gone when the subscription comes back: logged; the next epoch is delivered from its start
        await forget();
        (broker as any).resubscribe();
        await until(() => gaps().length === 3);
        expect(gaps()[2]).to.include({ reason: 'epoch', position: { epoch: '', offset: 0 } });
        await ghost.publish({ path: '/h', message: 13 }, history);
        await broker.publish({ path: '/h', message: 14 }, history);
        expect(messages()).to.equal([1, 2, 3, 4, 7, 8, 9, 10, 11, 12, 13, 14]);
        (broker as any).resubscribe();                                       // nothing missed
        await until(() => !(broker as any).healing.size);

        // A publish beyond what the history holds (never happens unless forged) is delivered once, the hole logged
        const last = sink.delivered.at(-1)!.position!;
        await admin.publish(`${prefix}p:/h`, 'x:1\n' + JSON.stringify({ path: '/h', message: 'forged', position: { epoch: last.epoch, offset: 10 } }));
        await until(() => gaps().length === 4);
        expect(gaps()[3]).to.equal({ path: '/h', reason: 'missing', since: last, next: { epoch: last.epoch, offset: 10 } });
        expect(sink.lostPaths).to.equal(['/h', '/h', '/h', '/h']);                // every gap it could not heal is reported
        expect(messages().at(-1)).to.equal('forged');
        expect(sink.delivered).to.have.length(13);

        // A path this node left is delivered as it comes, not tracked
        await broker.subscribe('/u');
        (broker as any).channels.delete(`${prefix}p:/u`);
        await broker.publish({ path: '/u', message: 'untracked' }, history);
        await until(() => sink.delivered.length === 14);
        expect((broker as any).positions.has('/u')).to.be.false();

        await ghost.stop();
        await broker.stop();
    });

    it('holds live publishes while it reads the stream, retries while Redis does not answer, and gives up after the timeout', async () => {

        const prefix = uniquePrefix();
        const history = { size: 100, ttl: 60000 };
        const broker = new RedisBroker({ url: redisUrl, prefix, timeout: 400 });
        const sink = recorder();
        await broker.start(sink);
        const ghost = await unseen(prefix);
        const messages = () => sink.delivered.map((envelope) => envelope.message);
        const gaps = () => sink.logs.filter((log) => log.tags.includes('gap'));

        // Reads of the stream (two arguments) wait for `gate`, or fail
        let gate: Promise<void> = Promise.resolve();
        let fail = false;
        let reads = 0;
        const script = (broker as any).script.bind(broker);
        (broker as any).script = async (source: unknown, keys: string[], args: string[]) => {

            if (args.length === 2) {
                ++reads;
                await gate;
                if (fail) {
                    throw new Error('unreachable');
                }
            }

            return script(source, keys, args);
        };

        let open!: () => void;
        const close = () => {

            gate = new Promise((resolve) => {

                open = resolve;
            });
        };

        await broker.subscribe('/h');
        await broker.publish({ path: '/h', message: 1 }, history);

        // Live publishes arriving during the read are held, a reconnection during it reads again
        close();
        await ghost.publish({ path: '/h', message: 2 }, history);
        const third = broker.publish({ path: '/h', message: 3 }, history);
        await until(() => reads === 1);
        const fourth = broker.publish({ path: '/h', message: 4 }, history);
        await wait(20);
        (broker as any).resubscribe();
        await wait(20);
        expect(messages()).to.equal([1]);
        open();
        await Promise.all([third, fourth]);
        expect(messages()).to.equal([1, 2, 3, 4]);
        expect(reads).to.equal(2);

        // Redis does not answer the read: retried until `timeout`, then the gap is logged and the held publishes go out
        fail = true;
        await ghost.publish({ path: '/h', message: 5 }, history);
        const readsBefore = reads;
        const started = Date.now();
        await broker.publish({ path: '/h', message: 6 }, history);
        expect(Date.now() - started).to.be.within(350, 2000);
        expect(reads - readsBefore).to.be.above(1);                      // retried
        expect(messages()).to.equal([1, 2, 3, 4, 6]);
        expect(gaps()).to.have.length(1);
        expect(gaps()[0]!.tags).to.equal(['redis', 'gap', 'error']);
        expect(gaps()[0]!.data).to.include({ path: '/h' });
        expect(sink.lostPaths).to.equal(['/h']);
        fail = false;

        // Left while the read is in flight: what was held goes out untracked
        close();
        await ghost.publish({ path: '/h', message: 7 }, history);
        const eighth = broker.publish({ path: '/h', message: 8 }, history);
        await until(() => (broker as any).healing.size === 1);
        await broker.unsubscribe('/h');
        open();
        await eighth;
        expect(messages()).to.equal([1, 2, 3, 4, 6, 8]);
        expect((broker as any).positions.size).to.equal(0);

        // Stopped while the read is in flight: the held publish is settled, nothing is delivered after
        await broker.subscribe('/h');
        await broker.publish({ path: '/h', message: 9 }, history);
        close();
        await ghost.publish({ path: '/h', message: 10 }, history);
        const eleventh = broker.publish({ path: '/h', message: 11 }, history);
        await until(() => (broker as any).healing.size === 1);
        await broker.stop();
        await eleventh;
        open();
        await wait(150);
        expect(messages()).to.equal([1, 2, 3, 4, 6, 8, 9]);

        await ghost.stop();
    });
});
