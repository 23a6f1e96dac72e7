// The Redis broker: the conformance suite every broker passes (test/broker.ts), then what only a shared bus
// has: several nodes on one Redis, Redis faults, and the history scripts. Only the public broker API is
// used; faults come from CLIENT KILL on our own connections, a TCP proxy, or a private redis-server.
//
// Redis comes from REDIS_URL (default redis://127.0.0.1:6379). Without it these tests are skipped
// loudly outside CI and fail under CI=true. Each run uses its own key and channel prefix.

import { randomBytes } from 'node:crypto';
import * as Net from 'node:net';

import * as Code from '@hapi/code';
import type * as Hapi from '@hapi/hapi';
import * as Lab from '@hapi/lab';
import { createClient } from '@redis/client';

import type { PublishEnvelope } from '../lib/index';
import { Keys, Scripts } from '../lib/brokers/redis/scripts';
import { RedisBroker } from '../lib/redis';
import type { RedisBrokerOptions } from '../lib/redis';
import { basic, conformance, connect, recorder } from './broker';
import type { Recorder } from './broker';
import { deleteRedisKeys, PrivateRedis, Proxy, freePort, redisAvailable, redisServerAvailable, redisUrl, server, skipWithoutRedis, until, wait } from './helpers';

const { expect } = Code;
const lab = Lab.script();
export { lab };
const { after, before, describe, it } = lab;

const runPrefix = `pulse-test:${process.pid}:${randomBytes(4).toString('hex')}:`;

const ci = process.env.CI === 'true';
skipWithoutRedis('Redis broker tests');

let prefixCounter = 0;
const uniquePrefix = (): string => `${runPrefix}${++prefixCounter}:`;

const admin = createClient({ url: redisUrl });

const cleanup = async (): Promise<void> => {

    await deleteRedisKeys(runPrefix, admin);
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

conformance(lab, 'redis', () => new RedisBroker({ url: redisUrl, prefix: uniquePrefix() }), { skip: !redisAvailable, inProcess: false });

// ---- Only a shared bus: several nodes, one Redis ----

const killConnection = async (broker: RedisBroker, which: 'pub' | 'sub', redis: typeof admin = admin): Promise<void> => {

    const list = await redis.sendCommand(['CLIENT', 'LIST']) as string;
    const line = list.split('\n').find((item) => item.includes(` name=hapi-pulse:${broker.id}:${which} `));
    expect(line).to.exist();
    const id = /^id=(\d+) /.exec(line!)![1]!;
    await redis.sendCommand(['CLIENT', 'KILL', 'ID', id]);
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
        expect(await channels()).to.equal([`${prefix}b`, `${prefix}g`]);                   // broadcasts and membership commands

        const client = await connect(b!.srv);
        await client.subscribe('/item/1', () => { });
        await client.subscribe('/item/2', () => { });
        expect(await channels()).to.equal([`${prefix}b`, `${prefix}g`, `${prefix}p:/item/1`, `${prefix}p:/item/2`]);
        const numsub = await admin.sendCommand(['PUBSUB', 'NUMSUB', `${prefix}p:/item/1`, `${prefix}b`]) as [string, number, string, number];
        expect(numsub).to.equal([`${prefix}p:/item/1`, 1, `${prefix}b`, 2]);

        await client.unsubscribe('/item/1');
        await eventually(async () => (await channels()).length === 3);
        expect(await channels()).to.equal([`${prefix}b`, `${prefix}g`, `${prefix}p:/item/2`]);

        await client.disconnect();
        await eventually(async () => (await channels()).length === 2);
        expect(await channels()).to.equal([`${prefix}b`, `${prefix}g`]);                   // broadcasts and membership commands

        await a!.srv.stop();
        await b!.srv.stop();
        expect(await channels()).to.equal([]);
        expect(await connectionsOf(a!.broker)).to.equal(0);
        expect(await connectionsOf(b!.broker)).to.equal(0);
    });

    it('gives concurrent publishers on two nodes distinct increasing offsets', async () => {

        const { list: [a, b], prefix } = await nodes(2);
        for (const { srv } of [a!, b!]) {
            srv.subscription('/h', { history: { size: 1000, ttl: 60000 } });
            await srv.start();
        }

        const client = await connect(b!.srv);
        const got: unknown[] = [];
        await client.subscribe('/h', (message: unknown) => got.push(message));

        const sink = recorder();
        const observer = new RedisBroker({ url: redisUrl, prefix });
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

        // Publishes that B's sockets missed on the path without history: proof that there was a gap to heal
        let healed = 0;
        const missed = (upTo: number) => Array.from({ length: upTo }, (_, i) => i + 1).filter((n) => !plain.includes(n)).length;

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

        // node-redis reconnects at once: a burst sent as soon as the kill is done lands in the gap before the
        // resubscription (kill again if it did not). Sent together with the kill, it mostly reached Redis first.
        const readies = () => logs.filter((tags) => tags.includes('sub') && tags.includes('ready')).length;
        await until(() => got.length >= 10);
        for (let attempt = 0; attempt < 10 && !healed; ++attempt) {
            const before = readies();
            await killConnection(b!.broker, 'sub');
            await Promise.all(Array.from({ length: 50 }, publish));
            const target = sent;
            await until(() => readies() > before, 3000, 'resubscription');
            await until(() => got.length >= target && plain.some((n) => n > target), 3000, 'catch-up');
            healed = missed(target);
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
        expect(missed(sent)).to.be.above(0);
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
            let drops = 0;                                              // A's subscribing connection lost
            for (const node of [a, b]) {
                const srv = await server({ broker: node.broker });
                srv.subscription('/plain/{id}');
                srv.subscription('/h/{id}', { history: { size: 10, ttl: 60000 } });
                srv.events.on('log', (event) => {

                    readies += event.tags.includes('ready') && node === a ? 1 : 0;
                    drops += event.tags.includes('sub') && event.tags.includes('error') && node === a ? 1 : 0;
                });
                await srv.start();
                sockets.push(srv);
            }

            const [srvA, srvB] = sockets as [Hapi.Server, Hapi.Server];
            const cut = async (what: string) => {

                const up = drops;
                proxy.cut();
                await until(() => drops > up, 2000, what);
            };

            const client = await connect(srvA);
            const got: unknown[] = [];
            await cut('the cut');
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
            await cut('the second cut');
            const joined: unknown[] = [];
            const joins = others.map((other) => other.subscribe('/plain/1', (message: unknown) => joined.push(message)).then(() => answered.push('joined')));
            await wait(300);
            expect([...answered].sort()).to.equal(['/h/1', '/plain/1']);
            proxy.restore();
            await Promise.all(joins);
            await srvB.publish('/plain/1', 'joined');
            await until(() => joined.length === 2);

            // Cut for longer than the timeout: refused, and nothing is left of the attempt
            await cut('the third cut');
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

    it('confirms a sub only once both connections are up (they reconnect independently)', { skip: !redisServerAvailable }, async () => {

        const redis = await PrivateRedis.start();
        const control = createClient({ url: redis.url });
        try {
            await control.connect();
            await control.sendCommand(['ACL', 'SETUSER', 'pulse', 'on', '>secret', '~*', '&*', '+@all']);
            const broker = new RedisBroker({ url: redis.url, client: { username: 'pulse', password: 'secret', socket: { reconnectStrategy: () => 50 } } });
            const sink = recorder();
            await broker.start(sink);

            // The publishing connection cannot log in again (the subscribing one stays) when Redis acknowledges the
            // subscription: the sub waits for it
            await control.sendCommand(['ACL', 'SETUSER', 'pulse', 'off']);
            await killConnection(broker, 'pub', control);
            await until(() => sink.logs.some((log) => log.tags.includes('pub') && log.tags.includes('error')), 2000, 'the kill');
            let confirmed = false;
            const subscribing = broker.subscribe('/a').then(() => (confirmed = true));
            await eventually(async () => (await control.sendCommand(['PUBSUB', 'NUMSUB', 'pulse:p:/a']) as [string, number])[1] === 1);
            await wait(20);
            expect(confirmed).to.be.false();
            const joining = broker.confirmed('/a');
            expect(joining).to.not.be.null();

            await control.sendCommand(['ACL', 'SETUSER', 'pulse', 'on']);
            await Promise.all([subscribing, joining]);
            expect(broker.confirmed('/a')).to.be.null();
            await broker.stop();
        }
        finally {
            control.destroy();
            await redis.kill();
        }
    });

    it('survives a Redis restart: refuses publishes while it is down and resumes after', { skip: !redisServerAvailable }, async () => {

        const redis = await PrivateRedis.start();
        try {
            const { list: [a, b] } = await nodes(2, {}, undefined, { url: redis.url, timeout: 3000, client: { socket: { reconnectStrategy: () => 100 } } });
            let errors = 0;
            let publisherDown = false;                                  // A's publishing connection lost
            const logged: string[][] = [];
            for (const { srv } of [a!, b!]) {
                srv.subscription('/stream');
                srv.subscription('/h', { history: { size: 10, ttl: 60000 } });
                srv.events.on('log', (event) => {

                    errors += event.tags.includes('error') ? 1 : 0;
                    publisherDown ||= srv === a!.srv && event.tags.includes('pub') && event.tags.includes('error');
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
            await until(() => errors > 0 && publisherDown);

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
            await Promise.all([b!.broker.confirmed('/stream'), b!.broker.confirmed('/late')]);
            await eventually(() => a!.broker.recover('/h', null, { size: 10, ttl: 60000 }).then(() => true, () => false), 5000);

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
            const drops = () => sink.logs.filter((log) => log.tags.includes('sub') && log.tags.includes('error')).length;
            const connected = drops();
            await redis.kill();
            await until(() => drops() > connected);
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

    // Publishes written to the history of a path but never seen live (published on a channel nobody listens to),
    // like those made while a node's subscription is down.
    class Nowhere extends Keys {

        override channel(): string {

            return `${this.prefix}nowhere`;
        }
    }

    const unseen = (prefix: string) => {

        const scripts = new Scripts((args) => admin.sendCommand(args), new Nowhere(prefix));
        return {
            publish: (envelope: PublishEnvelope, history: { size: number; ttl: number }) => scripts.publish(envelope.path, 'ghost:0', JSON.stringify(envelope), history)
        };
    };

    // A real reconnection of the subscribing connection: killed, and back once it logged 'ready' again.
    const reconnect = async (broker: RedisBroker, sink: Recorder): Promise<void> => {

        const readies = () => sink.logs.filter((log) => log.tags.includes('sub') && log.tags.includes('ready')).length;
        const before = readies();
        await killConnection(broker, 'sub');
        await until(() => readies() > before, 3000, 'resubscription');
    };

    it('heals a history path that had delivered nothing yet when its subscription dropped', async () => {

        const prefix = uniquePrefix();
        const history = { size: 100, ttl: 60000 };
        const broker = new RedisBroker({ url: redisUrl, prefix });
        const sink = recorder();
        await broker.start(sink);
        const ghost = unseen(prefix);                                       // publishes that never reach the channel

        await ghost.publish({ path: '/b', message: 'before' }, history);      // before this node subscribed: not its own
        await broker.subscribe('/b', history);
        await broker.subscribe('/fresh', history);                           // no publish ever: healed from offset 1
        await ghost.publish({ path: '/b', message: 'missed-1' }, history);
        await ghost.publish({ path: '/b', message: 'missed-2' }, history);
        await ghost.publish({ path: '/fresh', message: 'missed-3' }, history);

        await reconnect(broker, sink);
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
        await reconnect(broker, sink);
        await broker.publish({ path: '/b', message: 'after' }, history);
        await until(() => sink.delivered.length === 5);
        expect(sink.delivered.map((envelope) => envelope.message)).to.not.include('not for us');

        await broker.stop();
    });

    it('heals offset jumps from the stream, drops duplicates and logs the gaps it cannot heal', async () => {

        const prefix = uniquePrefix();
        const history = { size: 100, ttl: 60000 };
        const broker = new RedisBroker({ url: redisUrl, prefix });
        const sink = recorder();
        await broker.start(sink);
        await broker.subscribe('/h');
        const ghost = unseen(prefix);
        const messages = () => sink.delivered.map((envelope) => envelope.message);
        const gaps = () => sink.logs.filter((log) => log.tags.includes('gap')).map((log) => log.data as Record<string, unknown>);
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
        await reconnect(broker, sink);
        await until(() => gaps().length === 3);
        expect(gaps()[2]).to.include({ reason: 'epoch', position: { epoch: '', offset: 0 } });
        await ghost.publish({ path: '/h', message: 13 }, history);
        await broker.publish({ path: '/h', message: 14 }, history);
        expect(messages()).to.equal([1, 2, 3, 4, 7, 8, 9, 10, 11, 12, 13, 14]);
        await reconnect(broker, sink);                                       // nothing missed
        await broker.confirmed('/h');

        // A publish beyond what the history holds (never happens unless forged) is delivered once, the hole logged
        const last = sink.delivered.at(-1)!.position!;
        await admin.publish(`${prefix}p:/h`, 'x:1\n' + JSON.stringify({ path: '/h', message: 'forged', position: { epoch: last.epoch, offset: 10 } }));
        await until(() => gaps().length === 4);
        expect(gaps()[3]).to.equal({ path: '/h', reason: 'missing', since: last, next: { epoch: last.epoch, offset: 10 } });
        expect(sink.lostPaths).to.equal(['/h', '/h', '/h', '/h']);                // every gap it could not heal is reported
        expect(messages().at(-1)).to.equal('forged');
        expect(sink.delivered).to.have.length(13);
        expect(sink.logs.filter((log) => log.tags.includes('gap')).map((log) => log.tags)).to.equal([['redis', 'gap'], ['redis', 'gap'], ['redis', 'gap'], ['redis', 'gap']]);

        await broker.stop();
    });

    // A TCP relay to Redis that can hold what Redis sends and hand it over in one write, so that the client reads
    // Redis's answers and the messages published after them at once. cut() drops every connection and refuses
    // new ones until restore().
    class Relay {

        private readonly links = new Set<Net.Socket>();
        private readonly held = new Map<Net.Socket, Buffer[]>();
        private holding = false;
        private refusing = false;

        private constructor(private readonly server: Net.Server, readonly url: string) { }

        static async start(): Promise<Relay> {

            const target = new URL(redisUrl);
            const server = Net.createServer();
            await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
            const relay = new Relay(server, `redis://127.0.0.1:${(server.address() as Net.AddressInfo).port}`);
            server.on('connection', (inbound) => relay.link(inbound, Number(target.port || 6379), target.hostname));
            return relay;
        }

        hold(): void {

            this.holding = true;
        }

        release(): void {

            this.holding = false;
            for (const [inbound, chunks] of this.held) {
                inbound.write(Buffer.concat(chunks));
            }

            this.held.clear();
        }

        cut(): void {

            this.refusing = true;
            this.links.forEach((socket) => socket.destroy());
        }

        restore(): void {

            this.refusing = false;
        }

        close(): Promise<void> {

            this.cut();
            return new Promise((resolve) => this.server.close(() => resolve()));
        }

        private link(inbound: Net.Socket, port: number, host: string): void {

            if (this.refusing) {
                inbound.destroy();
                return;
            }

            const outbound = Net.connect(port, host);
            inbound.pipe(outbound);
            outbound.on('data', (chunk: Buffer) => {

                if (!this.holding) {
                    inbound.write(chunk);
                    return;
                }

                const chunks = this.held.get(inbound) ?? [];
                chunks.push(chunk);
                this.held.set(inbound, chunks);
            });

            for (const [from, to] of [[inbound, outbound], [outbound, inbound]]) {
                this.links.add(from!);
                from!.on('error', () => to!.destroy());
                from!.on('close', () => {

                    this.links.delete(from!);
                    to!.destroy();
                });
            }
        }
    }

    it('publishes to several paths with one command: one EVALSHA from the publisher, the message in it once', { skip: !redisServerAvailable }, async () => {

        const redis = await PrivateRedis.start();
        const monitor = Net.connect(redis.port, '127.0.0.1');
        try {
            const { list: [a, b] } = await nodes(2, {}, undefined, { url: redis.url, presence: { lease: 60000 } });   // no lease renewal meanwhile
            for (const { srv } of [a!, b!]) {
                srv.subscription('/kept/{id}', { history: { size: 10, ttl: 60000 } });
                srv.subscription('/plain/{id}');
                await srv.start();
            }

            const paths = ['/kept/1', '/plain/1', '/kept/2'];
            const client = await connect(b!.srv);
            const got: unknown[] = [];
            for (const path of paths) {
                await client.subscribe(path, (message: unknown) => got.push([path, message]));
            }

            await a!.srv.publish(paths, 'warm-up: loads the script');
            await until(() => got.length === 3);

            const probe = createClient({ url: redis.url });
            await probe.connect();
            const pubLine = (await probe.sendCommand(['CLIENT', 'LIST']) as string).split('\n').find((line) => line.includes(` name=hapi-pulse:${a!.broker.id}:pub `))!;
            probe.destroy();
            const publisher = / addr=(\S+) /.exec(pubLine)![1]!;

            // Every command Redis runs from now on, with where it came from (a client's address, or lua)
            let seen = '';
            monitor.setEncoding('utf8');
            monitor.on('data', (chunk: string) => (seen += chunk));
            monitor.write('MONITOR\r\n');
            await until(() => seen.startsWith('+OK'));

            await a!.srv.publish(paths, 'the-message-marker', { once: true });
            await until(() => got.length === 4);                                    // once: on /kept/1 only
            await wait(100);
            const lines = seen.split('\r\n').filter((line) => line.startsWith('+') && line !== '+OK');
            const fromPublisher = lines.filter((line) => line.includes(`[0 ${publisher}]`));
            expect(fromPublisher).to.have.length(1);
            expect(fromPublisher[0]).to.include('"EVALSHA"');
            expect(fromPublisher[0]!.split('the-message-marker')).to.have.length(2);
            const published = lines.filter((line) => line.includes('[0 lua] "PUBLISH"'));
            expect(published.map((line) => /"PUBLISH" "[^"]*p:([^"]*)"/.exec(line)![1])).to.equal(paths);
            expect(got[3]).to.equal(['/kept/1', 'the-message-marker']);
            await client.disconnect();
        }
        finally {
            monitor.destroy();
            await redis.kill();
        }
    });

    it('publishes to several paths all or nothing: refused while Redis is unreachable, and when one path\'s history keys are of another type', async () => {

        const proxy = await Proxy.start(Number(new URL(redisUrl).port || 6379));
        try {
            const prefix = uniquePrefix();
            const history = { size: 10, ttl: 60000 };
            const options = { timeout: 3000, client: { socket: { reconnectStrategy: () => 50 } } };
            const a = { broker: new RedisBroker({ url: proxy.url, prefix, ...options }) };
            const b = { broker: new RedisBroker({ url: redisUrl, prefix, ...options }) };
            const servers: Hapi.Server[] = [];
            for (const node of [a, b]) {
                const srv = await server({ broker: node.broker });
                srv.subscription('/h/{id}', { history });
                srv.subscription('/plain/{id}');
                await srv.start();
                servers.push(srv);
            }

            const [srvA, srvB] = servers as [Hapi.Server, Hapi.Server];
            const paths = ['/h/1', '/plain/1', '/h/2'];
            const client = await connect(srvB);
            const got: unknown[] = [];
            for (const path of paths) {
                await client.subscribe(path, (message: unknown) => got.push([path, message]));
            }

            // A cannot reach Redis: refused at once, nothing anywhere
            let down = false;
            srvA.events.on('log', (event) => (down ||= event.tags.includes('pub') && event.tags.includes('error')));
            proxy.cut();
            await until(() => down, 2000, 'the cut');
            const unavailable = await expect(srvA.publish(paths, 'while down')).to.reject('Redis broker unavailable');
            expect((unavailable as any).output.statusCode).to.equal(503);

            // One path's history held by a key of another type: Redis refuses the whole script before writing anything
            proxy.restore();
            await admin.set(`${prefix}m:/h/2`, 'not a hash');
            const refused = await expect(srvB.publish(paths, 'wrong type')).to.reject(/^Redis broker command failed: WRONGTYPE/);
            expect((refused as any).output.statusCode).to.equal(500);
            await admin.del(`${prefix}m:/h/2`);

            await eventually(() => srvA.publish(paths, 'after').then(() => true, () => false), 5000);
            await until(() => got.length === 3);
            await wait(50);
            expect(got).to.equal(paths.map((path) => [path, 'after']));
            for (const path of ['/h/1', '/h/2']) {
                expect((await b.broker.recover(path, null, history)).position.offset).to.equal(1);
            }

            await client.disconnect();
            await Promise.all(servers.map((srv) => srv.stop()));
        }
        finally {
            await proxy.close();
        }
    });

    it('checks the first publish after a reconnection for a gap, even one of a new epoch that comes in the same read as the resubscription', async () => {

        const relay = await Relay.start();
        try {
            const prefix = uniquePrefix();
            const history = { size: 100, ttl: 60000 };
            const broker = new RedisBroker({ url: relay.url, prefix, client: { socket: { reconnectStrategy: () => 100 } } });
            const sink = recorder();
            await broker.start(sink);
            await broker.subscribe('/h', history);
            const scripts = new Scripts((args) => admin.sendCommand(args), new Keys(prefix));
            const publish = (message: unknown) => scripts.publish('/h', 'other:0', JSON.stringify({ path: '/h', message }), history);
            const last = await publish(1);
            await until(() => sink.delivered.length === 1);

            // While the connections are down: a publish this node misses, then the history expires and starts again
            const drops = () => sink.logs.filter((entry) => entry.tags.includes('sub') && entry.tags.includes('error')).length;
            const connected = drops();
            relay.cut();
            await until(() => drops() > connected, 2000, 'the cut');
            await publish('missed');
            await admin.del([`${prefix}h:/h`, `${prefix}m:/h`]);

            // The client reconnects and subscribes again by itself; Redis's answers are held, and the new epoch's
            // first publish joins them: the client reads all of it at once
            relay.hold();
            relay.restore();
            await eventually(async () => (await admin.sendCommand(['PUBSUB', 'NUMSUB', `${prefix}p:/h`]) as [string, number])[1] === 1);
            const fresh = await publish('new epoch');
            await wait(50);
            relay.release();

            await until(() => sink.delivered.length === 2, 3000, 'the new epoch');
            await wait(50);
            expect(sink.delivered.map((envelope) => envelope.message)).to.equal([1, 'new epoch']);
            expect(sink.logs.filter((entry) => entry.tags.includes('gap')).map((entry) => entry.data)).to.equal([{ path: '/h', reason: 'epoch', since: last, position: fresh }]);
            expect(sink.lostPaths).to.equal(['/h']);
            await broker.stop();
        }
        finally {
            await relay.close();
        }
    });
});
