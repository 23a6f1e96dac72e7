// The broker conformance suite: one behavioural suite that every broker must pass, exported as one function
// and run by each broker's own test file (test/memory-broker.ts: the reference, test/redis-broker.ts). Also
// what those files share: a recording sink and the test users.

import * as Basic from '@hapi/basic';
import * as Code from '@hapi/code';
import type * as Hapi from '@hapi/hapi';
import type * as Lab from '@hapi/lab';

import type { Broker, BrokerSink, PublishEnvelope } from '../lib/index';
import { Nes, server, until, url, wait } from './helpers';
import type { NesClient } from './helpers';

const { expect } = Code;

const users: Record<string, { scope: string[] }> = {
    john: { scope: ['user-john'] },
    jane: { scope: ['user-jane'] },
    jim: { scope: ['user-jim'] }
};

export const basic = async (srv: Hapi.Server): Promise<void> => {

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

export const connect = async (srv: Hapi.Server, user?: string): Promise<NesClient> => {

    const client = new Nes.Client(url(srv));
    await client.connect(user ? { auth: { headers: { authorization: header(user) } } } : {});
    return client;
};

export type Recorder = BrokerSink & {
    delivered: PublishEnvelope[];
    broadcasts: unknown[];
    logs: { tags: string[]; data: unknown }[];
    lostPaths: string[];
    log(tags: string[], data: unknown): void;
    lost(path: string): void;
};

// A sink that records what a broker delivers, for broker-level tests.
export const recorder = (): Recorder => {

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

export interface Conformance {
    skip?: boolean;
    inProcess: boolean;                  // delivers inside publish() (a filter error rejects the publish), or over a bus (logged)
}

// Registers `<name> broker`: every test of the suite on brokers from `make` (a fresh one for each use).
export const conformance = (lab: Lab.script.Script, name: string, make: () => Broker, options: Conformance): void => {

    const { describe, it } = lab;
    describe(`${name} broker: conformance`, { skip: options.skip ?? false }, () => {

        it('delivers a publish once to the subscribers of that exact path', async () => {

            const srv = await server({ broker: make() });
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

            const srv = await server({ broker: make() });
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
            if (options.inProcess) {
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

            const srv = await server({ auth: { type: 'direct' }, broker: make() }, 'pulse', basic);
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

            const srv = await server({ auth: { type: 'direct', index: true }, broker: make() }, 'pulse', basic);
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

            const broker = make();
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

            const srv = await server({ broker: make() });
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

            const broker = make();
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

            const broker = make();
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

            const broker = make();
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

            const broker = make();
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

        it('publishes to several paths in one call: every path delivered, each numbered in its own history', async () => {

            const broker = make();
            const sink = recorder();
            await broker.start(sink);
            const paths = ['/many/a', '/many/b', '/many/c'];
            await Promise.all(paths.map((path) => broker.subscribe(path)));

            const history = { size: 10, ttl: 60000 };
            await broker.publish({ path: '/many/a', message: 'before' }, history);

            // /many/b keeps no history; /many/a has one entry already, /many/c none
            const publishes = paths.map((path) => ({ envelope: { path, message: { text: 'all' }, internal: 'x', user: 'john', once: paths } as PublishEnvelope, history: path === '/many/b' ? undefined : history }));
            await broker.publishMany!(publishes);
            const [a, b, c] = publishes.map(({ envelope }) => envelope);
            expect(a!.position!.offset).to.equal(2);
            expect(b!.position).to.not.exist();
            expect(c!.position!.offset).to.equal(1);
            await until(() => sink.delivered.length === 4);
            expect(sink.delivered.slice(1)).to.equal([a!, b!, c!]);

            expect(await broker.recover('/many/a', { epoch: a!.position!.epoch, offset: 1 }, history)).to.equal({ recovered: true, entries: [a!], position: a!.position! });
            expect(await broker.recover('/many/c', { epoch: c!.position!.epoch, offset: 0 }, history)).to.equal({ recovered: true, entries: [c!], position: c!.position! });

            // A later publish of one of the paths follows on in its history; no message at all travels too; none is nothing
            const next: PublishEnvelope = { path: '/many/c', message: 'next' };
            await broker.publish(next, history);
            expect(next.position).to.equal({ epoch: c!.position!.epoch, offset: 2 });
            const empty = ['/many/a', '/many/b'].map((path) => ({ envelope: { path, message: undefined } as PublishEnvelope, history }));
            await broker.publishMany!(empty);
            expect(empty.map(({ envelope }) => envelope.position!.offset)).to.equal([3, 1]);
            await broker.publishMany!([]);
            await until(() => sink.delivered.length === 7);
            await wait(50);
            expect(sink.delivered.slice(4).map((envelope) => [envelope.path, envelope.message, envelope.position?.offset])).to.equal([['/many/c', 'next', 2], ['/many/a', undefined, 3], ['/many/b', undefined, 1]]);

            await broker.stop();
        });

        it('publishes to several paths all or nothing: a message that cannot be serialised reaches and records no path', async () => {

            const broker = make();
            const sink = recorder();
            await broker.start(sink);
            await Promise.all(['/none/a', '/none/b'].map((path) => broker.subscribe(path)));

            const history = { size: 10, ttl: 60000 };
            const cycle: Record<string, unknown> = {};
            cycle.self = cycle;
            await expect(broker.publishMany!([{ envelope: { path: '/none/a', message: cycle }, history }, { envelope: { path: '/none/b', message: cycle }, history }])).to.reject(TypeError);
            await broker.publishMany!([{ envelope: { path: '/none/b', message: 'after' }, history }, { envelope: { path: '/none/a', message: 'after' } }]);
            await until(() => sink.delivered.length === 2);
            await wait(50);
            expect(sink.delivered.map((envelope) => [envelope.path, envelope.message])).to.equal([['/none/b', 'after'], ['/none/a', 'after']]);
            expect(sink.delivered[0]!.position!.offset).to.equal(1);                         // the refused one took no offset
            expect((await broker.recover('/none/a', null, history)).position.offset).to.equal(0);

            await broker.stop();
        });

        it('delivers server.publish([paths]) on each path through its own filter, and checks every path before sending any', async () => {

            const srv = await server({ auth: { type: 'direct', index: true }, broker: make() }, 'pulse', basic);
            srv.subscription('/team/{id}', { auth: { index: true }, filter: (path, message, { credentials }) => !(path === '/team/2' && credentials?.user === 'jane') });
            srv.subscription('/open/{id}');
            await srv.start();

            const john = await connect(srv, 'john');
            const jane = await connect(srv, 'jane');
            const got: unknown[] = [];
            for (const [name, client] of [['john', john], ['jane', jane]] as const) {
                for (const path of ['/team/1', '/team/2', '/open/1']) {
                    await client.subscribe(path, (message: unknown) => got.push([name, path, message]));
                }
            }

            await srv.publish(['/team/1', '/team/2', '/open/1'], 'each');
            await until(() => got.length === 5);
            await srv.publish(['/team/2', '/team/1', '/open/1'], 'once', { once: true });
            await until(() => got.length === 6);

            // /open/{id} is not indexed: a targeted publish listing it is refused before anything is sent; an
            // unserialisable message too
            await expect(srv.publish(['/team/1', '/open/1'], 'refused', { user: 'john' })).to.reject('Subscription auth indexing is disabled');
            const cycle: Record<string, unknown> = {};
            cycle.self = cycle;
            await expect(srv.publish(['/team/1', '/team/2'], cycle)).to.reject(TypeError);
            await srv.publish(['/team/1', '/team/2'], 'for john', { user: 'john' });
            await until(() => got.length === 8);
            await wait(50);
            expect(got).to.have.length(8);
            expect(got.slice(0, 5)).to.contain([['john', '/team/1', 'each'], ['john', '/team/2', 'each'], ['john', '/open/1', 'each'], ['jane', '/team/1', 'each'], ['jane', '/open/1', 'each']]);
            expect(got[5]).to.equal(['john', '/team/2', 'once']);              // jane: /team/2 is hers first, and its filter drops her
            expect(got.slice(6)).to.equal([['john', '/team/1', 'for john'], ['john', '/team/2', 'for john']]);

            await john.disconnect();
            await jane.disconnect();
            await srv.stop();
        });
    });
};
