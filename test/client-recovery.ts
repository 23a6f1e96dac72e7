// Client side of the recovery extension (protocol.md §8.2), end to end: a client that loses its socket gets what
// it missed, in order and once, from one node or from another node through Redis; says so when it cannot; and
// stays a plain nes client towards stock nes servers and for applications that did not opt in.
//
// Redis comes from REDIS_URL (default redis://127.0.0.1:6379). Without it the cross-node test is skipped loudly
// outside CI and fails under CI=true (as in test/broker.ts).

import { once } from 'node:events';
import { randomBytes } from 'node:crypto';
import * as Net from 'node:net';

import * as Boom from '@hapi/boom';
import * as Code from '@hapi/code';
import type * as Hapi from '@hapi/hapi';
import * as Lab from '@hapi/lab';
import { createClient } from '@redis/client';
import WebSocket, { WebSocketServer } from 'ws';

import { Client } from '../lib/client';
import type { ClientOptions, SubscriptionFlags } from '../lib/client';
import * as Pulse from '../lib/index';
import { RedisBroker } from '../lib/redis';
import { Nes, redisAvailable, redisUrl, server, skipWithoutRedis, teardown, until, url, wait } from './helpers';

const { expect } = Code;
const lab = Lab.script();
export { lab };
const { describe, it } = lab;


// ---- Harness ----

const defer = teardown(lab);

// Frames our client sends and receives, through Client.WebSocket
const recorded = { sent: [] as any[], received: [] as any[] };

class RecordingWebSocket extends WebSocket {

    constructor(address: string, options?: WebSocket.ClientOptions) {

        super(address, options);
        this.on('message', (data) => recorded.received.push(JSON.parse(data.toString())));
    }

    override send(data: any): void {

        recorded.sent.push(JSON.parse(data));
        super.send(data);
    }
}

const client = (address: string, options?: ClientOptions, record = false): Client => {

    const c = new Client(address, options);
    c.onError = () => { };
    if (record) {
        recorded.sent = [];
        recorded.received = [];
        Client.WebSocket = RecordingWebSocket as any;
        defer(() => (Client.WebSocket = null));
    }

    defer(() => c.disconnect());
    return c;
};

const started = async (srv: Hapi.Server): Promise<Hapi.Server> => {

    await srv.start();
    defer(() => srv.stop({ timeout: 100 }));
    return srv;
};

// A started hapi-pulse server with one subscription
const withSubscription = async (path: string, subscription: Pulse.SubscriptionOptions, options: Record<string, unknown> = {}): Promise<Hapi.Server> => {

    const srv = await server(options);
    srv.subscription(path, subscription);
    return await started(srv);
};

// Resolves on the next onConnect
const reconnection = (c: Client): Promise<void> => new Promise((resolve) => (c.onConnect = resolve));

const dropAll = (srv: Hapi.Server): Promise<void> => srv.eachSocket((socket) => socket.disconnect());

type Seen = [unknown, SubscriptionFlags][];

const range = (from: number, to: number): number[] => Array.from({ length: to - from + 1 }, (_, i) => from + i);


// A scripted ws server for the corner cases a real server does not produce on demand. `onMessage` answers; the
// hello gets a plain reply unless it answers it.
interface Raw {
    url: string;
    connections: { ws: WebSocket; received: any[] }[];
}

const raw = async (onMessage: (ws: WebSocket, message: any, connection: number) => boolean | void): Promise<Raw> => {

    const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
    await once(wss, 'listening');
    const result: Raw = { url: `ws://127.0.0.1:${(wss.address() as Net.AddressInfo).port}`, connections: [] };
    wss.on('connection', (ws) => {

        const connection = { ws, received: [] as any[] };
        const index = result.connections.push(connection) - 1;
        ws.on('message', (data) => {

            const message = JSON.parse(data.toString());
            connection.received.push(message);
            if (onMessage(ws, message, index) !== true && message.type === 'hello') {
                ws.send(JSON.stringify({ type: 'hello', id: message.id, socket: `raw-${index}`, heartbeat: false }));
            }
        });
    });

    defer(() => {

        for (const ws of wss.clients) {
            ws.terminate();
        }

        wss.close();
    });

    return result;
};


// ---- Redis availability (as test/broker.ts) ----

const runPrefix = `pulse-test:client:${process.pid}:${randomBytes(4).toString('hex')}:`;


const ci = process.env.CI === 'true';
skipWithoutRedis('client recovery across nodes (Redis)');

// A loopback TCP proxy with a switchable target: the client keeps one URL while the node behind it changes.
// Without a target, connections are dropped as they arrive.
const proxy = async (target: number) => {

    const pipes = new Set<Net.Socket>();
    const state: { target: number | null } = { target };
    const listener = Net.createServer((inbound) => {

        if (state.target === null) {
            inbound.destroy();
            return;
        }

        const outbound = Net.connect(state.target, '127.0.0.1');
        pipes.add(inbound);
        pipes.add(outbound);
        const drop = () => {

            inbound.destroy();
            outbound.destroy();
            pipes.delete(inbound);
            pipes.delete(outbound);
        };

        inbound.on('error', drop).on('close', drop);
        outbound.on('error', drop).on('close', drop);
        inbound.pipe(outbound);
        outbound.pipe(inbound);
    });

    listener.listen(0, '127.0.0.1');
    await once(listener, 'listening');
    const result = {
        port: (listener.address() as Net.AddressInfo).port,

        // Cuts the current connections (the client sees an abnormal closure) and sends new ones to `port`
        switchTo: (port: number | null) => {

            state.target = port;
            for (const socket of pipes) {
                socket.destroy();
            }

            pipes.clear();
        },
        close: () => {

            result.switchTo(null);
            listener.close();
        }
    };

    defer(result.close);
    return result;
};


// ---- Tests ----

describe('Client recovery', () => {

    it('receives what it missed while disconnected, in order and once, then live publications', async () => {

        const srv = await withSubscription('/item/{id}', { history: { size: 100, ttl: 60000 } });
        const c = client(url(srv), { recovery: true }, true);
        const seen: Seen = [];
        await c.connect({ delay: 150, maxDelay: 150, jitter: 0 });
        await c.subscribe('/item/1', (message, flags) => seen.push([message, flags]));
        await srv.publish('/item/1', 0);
        await until(() => seen.length === 1);
        const firstId = c.id;

        // Plain nes until the extension: the first hello asked for recovery, with no position yet
        expect(recorded.sent[0]).to.equal({ type: 'hello', version: '2', pulse: { recovery: true }, id: 1 });
        expect(recorded.received.find((frame) => frame.type === 'sub').pulse.position.offset).to.equal(0);
        expect(recorded.received.find((frame) => frame.type === 'pub').position.offset).to.equal(1);

        let disconnected = false;
        c.onDisconnect = () => (disconnected = true);
        const back = reconnection(c);
        await dropAll(srv);
        await until(() => disconnected);

        for (let i = 1; i <= 50; ++i) {
            await srv.publish('/item/1', i);
        }

        expect(c.id).to.be.null();                                          // all 50 published while away
        await back;
        await srv.publish('/item/1', 'live');
        await until(() => seen.length === 52);
        await wait(30);

        expect(c.id).to.not.equal(firstId);
        expect(seen.map(([message]) => message)).to.equal([...range(0, 50), 'live']);
        expect(seen.every(([, flags]) => Object.keys(flags).length === 0)).to.be.true();

        const hello = recorded.sent.filter((frame) => frame.type === 'hello')[1];
        expect(hello.subs).to.equal(['/item/1']);
        expect(hello.pulse).to.equal({ recovery: true, positions: { '/item/1': { epoch: hello.pulse.positions['/item/1'].epoch, offset: 1 } } });
        expect(recorded.received.filter((frame) => frame.type === 'hello')[1].pulse.recovered).to.equal({ '/item/1': true });
    });

    it('tells every handler once when the missed publications are gone, then continues live', async () => {

        const srv = await withSubscription('/feed', { history: { size: 5, ttl: 60000 } });
        const c = client(url(srv), { recovery: true });
        const first: Seen = [];
        const second: Seen = [];
        await c.connect({ delay: 150, maxDelay: 150, jitter: 0 });
        await c.subscribe('/feed', (message, flags) => first.push([message, flags]));
        await c.subscribe('/feed', (message, flags) => second.push([message, flags]));
        await srv.publish('/feed', 'before');
        await until(() => second.length === 1);

        let disconnected = false;
        c.onDisconnect = () => (disconnected = true);
        const back = reconnection(c);
        await dropAll(srv);
        await until(() => disconnected);
        for (let i = 0; i < 20; ++i) {
            await srv.publish('/feed', `missed-${i}`);
        }

        expect(c.id).to.be.null();
        await back;
        await srv.publish('/feed', 'live');
        await until(() => second.length === 3);
        await wait(30);

        const expected = [['before', {}], [undefined, { recovered: false }], ['live', {}]];
        expect(first).to.equal(expected);
        expect(second).to.equal(expected);

        // The position was reset to the server's: the next reconnection recovers normally
        disconnected = false;
        const again = reconnection(c);
        await dropAll(srv);
        await until(() => disconnected);
        await srv.publish('/feed', 'missed-again');
        await again;
        await until(() => second.length === 4);
        expect(second[3]).to.equal(['missed-again', {}]);
    });

    it('neither loses nor duplicates publications racing the replay', async () => {

        const srv = await withSubscription('/race', {
            history: { size: 1000, ttl: 60000 },
            filter: () => new Promise((resolve) => setTimeout(() => resolve(true), 1))              // slow replay
        });

        const c = client(url(srv), { recovery: true });
        const seen: unknown[] = [];
        await c.connect({ delay: 40, maxDelay: 40, jitter: 0 });
        await c.subscribe('/race', (message) => seen.push(message));

        let disconnected = false;
        c.onDisconnect = () => (disconnected = true);
        let connectedAt = 0;
        let published = 0;
        c.onConnect = () => (connectedAt = published);
        await dropAll(srv);
        await until(() => disconnected);

        // Publishes run on while the client reconnects and while its replay is under way
        const publishing: Promise<void>[] = [];
        for (let i = 1; i <= 300; ++i) {
            publishing.push(srv.publish('/race', i));
            published = i;
            await wait(i % 3 ? 0 : 1);
        }

        await Promise.all(publishing);
        await until(() => seen.length >= 300, 5000);
        await wait(50);
        expect(connectedAt).to.be.within(1, 299);
        expect(seen).to.equal(range(1, 300));
    });

    it('forgets the position of a path on unsubscribe and on revoke', async () => {

        const srv = await withSubscription('/item/{id}', { history: { size: 100, ttl: 60000 } });
        const c = client(url(srv), { recovery: true }, true);
        await c.connect({ delay: 50, maxDelay: 50, jitter: 0 });
        const seen: Seen = [];
        const handler = (message: unknown, flags: SubscriptionFlags) => seen.push([message, flags]);
        for (const path of ['/item/1', '/item/2', '/item/3']) {
            await c.subscribe(path, handler);
            await srv.publish(path, path);
        }

        await until(() => seen.length === 3);
        await c.unsubscribe('/item/2', handler);
        await srv.eachSocket((socket) => socket.revoke('/item/3', 'bye'));
        await until(() => seen.length === 4);
        expect(seen[3]).to.equal(['bye', { revoked: true }]);

        // Subscribed again while disconnected: sent with the next hello, without the old positions
        let disconnected = false;
        c.onDisconnect = () => (disconnected = true);
        const back = reconnection(c);
        await dropAll(srv);
        await until(() => disconnected);
        await c.subscribe('/item/2', handler);
        await c.subscribe('/item/3', handler);
        await back;

        const hello = recorded.sent.filter((frame) => frame.type === 'hello')[1];
        expect(hello.subs).to.equal(['/item/1', '/item/2', '/item/3']);
        expect(hello.pulse.positions).to.equal({ '/item/1': { epoch: hello.pulse.positions['/item/1'].epoch, offset: 1 } });
    });

    it('forgets the position of a path whose sub failed', async () => {

        let calls = 0;
        const srv = await withSubscription('/item/{id}', {
            history: { size: 100, ttl: 60000 },
            onSubscribe: () => {

                if (++calls === 2) {
                    throw Boom.forbidden('Not now');
                }
            }
        });

        const c = client(url(srv), { recovery: true }, true);
        await c.connect({ delay: 50, maxDelay: 50, jitter: 0 });
        const seen: Seen = [];
        const handler = (message: unknown, flags: SubscriptionFlags) => seen.push([message, flags]);

        // The first sub is answered, with a position, once the path was left and asked for again; the second fails
        const first = c.subscribe('/item/1', handler);
        const left = c.unsubscribe('/item/1', handler);
        const second = c.subscribe('/item/1', handler);
        await first;
        await left;
        await expect(second).to.reject('Not now');
        expect(recorded.received.filter((frame) => frame.type === 'sub').map((frame) => frame.statusCode ?? frame.pulse.position.offset)).to.equal([0, 403]);
        expect(c.subscriptions()).to.equal([]);
        await srv.publish('/item/1', 'not subscribed');

        // Subscribed again while disconnected: sent with the next hello, without the position of the failed sub
        let disconnected = false;
        c.onDisconnect = () => (disconnected = true);
        const back = reconnection(c);
        await dropAll(srv);
        await until(() => disconnected);
        await c.subscribe('/item/1', handler);
        await back;
        await srv.publish('/item/1', 'live');
        await until(() => seen.length > 0);
        await wait(30);

        const hello = recorded.sent.filter((frame) => frame.type === 'hello')[1];
        expect(hello.subs).to.equal(['/item/1']);
        expect(hello.pulse).to.equal({ recovery: true });
        expect(seen).to.equal([['live', {}]]);
    });

    it('recovers from another node through the Redis stream behind the same URL', { skip: !redisAvailable }, async () => {

        const prefix = `${runPrefix}${randomBytes(3).toString('hex')}:`;
        const admin = createClient({ url: redisUrl });
        await admin.connect();
        defer(async () => {

            const keys = await admin.keys(`${prefix}*`);
            if (keys.length) {
                await admin.del(keys);
            }

            admin.destroy();
        });

        const node = () => withSubscription('/item/{id}', { history: { size: 100, ttl: 60000 } }, { broker: new RedisBroker({ url: redisUrl, prefix }) });
        const a = await node();
        const b = await node();
        const front = await proxy(Number(a.info.port));

        const c = client(`ws://127.0.0.1:${front.port}`, { recovery: true });
        const seen: Seen = [];
        await c.connect({ delay: 20, maxDelay: 20, jitter: 0 });
        await c.subscribe('/item/1', (message, flags) => seen.push([message, flags]));
        expect(c.id).to.contain(a.info.id);
        await b.publish('/item/1', 0);                                     // reaches A through Redis
        await until(() => seen.length === 1);

        let disconnected = false;
        c.onDisconnect = () => (disconnected = true);
        const back = reconnection(c);
        front.switchTo(null);                                               // no way back until all 50 are out
        await until(() => disconnected);
        for (let i = 1; i <= 50; ++i) {
            await (i % 2 ? a : b).publish('/item/1', i);
        }

        expect(c.id).to.be.null();
        front.switchTo(Number(b.info.port));
        await back;
        expect(c.id).to.contain(b.info.id);
        await a.publish('/item/1', 'live');
        await until(() => seen.length === 52, 5000);
        await wait(50);
        expect(seen.map(([message]) => message)).to.equal([...range(0, 50), 'live']);
        expect(seen.every(([, flags]) => Object.keys(flags).length === 0)).to.be.true();
    });

    if (!redisAvailable && ci) {
        it('requires Redis under CI', () => {

            throw new Error(`CI=true but no Redis answers at ${redisUrl}`);
        });
    }

    it('leaves stock nes clients, and clients that did not opt in, with plain nes frames', async () => {

        const srv = await withSubscription('/item/{id}', { history: { size: 10, ttl: 60000 } });

        const pulse = new Client(url(srv), { recovery: true });
        defer(() => pulse.disconnect());
        const pulseSeen: Seen = [];
        await pulse.connect();
        await pulse.subscribe('/item/1', (message, flags) => pulseSeen.push([message, flags]));

        const nes = new Nes.Client(url(srv));
        defer(() => nes.disconnect());
        const nesSeen: unknown[] = [];
        await nes.connect();
        await nes.subscribe('/item/1', (message: unknown) => nesSeen.push(message));
        const nesFrames: string[] = [];
        const ws = nes._ws;
        const onmessage = ws.onmessage;
        ws.onmessage = (event: { data: string }) => {

            nesFrames.push(event.data);
            onmessage(event);
        };

        const plain = client(url(srv), {}, true);
        const plainSeen: Seen = [];
        await plain.connect();
        await plain.subscribe('/item/1', (message, flags) => plainSeen.push([message, flags]));

        await srv.publish('/item/1', { n: 1 });
        await until(() => nesSeen.length === 1 && plainSeen.length === 1 && pulseSeen.length === 1);

        expect(nesFrames).to.equal(['{"type":"pub","path":"/item/1","message":{"n":1}}']);
        expect(recorded.sent).to.equal([{ type: 'hello', version: '2', id: 1 }, { type: 'sub', path: '/item/1', id: 2 }]);
        expect(recorded.received.map((frame) => Object.keys(frame).sort())).to.equal([['heartbeat', 'id', 'socket', 'type'], ['id', 'path', 'type'], ['message', 'path', 'type']]);
        expect(pulseSeen).to.equal([[{ n: 1 }, {}]]);
    });

    it('works against a stock @hapi/nes server, which ignores the extension', async () => {

        const srv = await started(await server({ auth: { type: 'direct', route: 'basic' } }, 'nes', async (s) => {

            await s.register(require('@hapi/basic'));
            s.auth.strategy('basic', 'basic', { validate: (_request: unknown, user: string) => ({ isValid: user !== 'bad', credentials: { user } }) });
            s.route({ method: 'GET', path: '/me', options: { auth: 'basic', handler: (request) => request.auth.credentials } });
        }));

        (srv as any).subscription('/item/{id}');
        const c = client(url(srv), { recovery: true }, true);
        let calls = 0;
        const auth = () => {

            ++calls;
            return { headers: { authorization: 'Basic ' + Buffer.from('john:x').toString('base64') } };
        };

        const seen: Seen = [];
        await c.subscribe('/item/1', (message, flags) => seen.push([message, flags]));
        await c.connect({ auth, delay: 10, maxDelay: 10 });
        expect((await c.request('/me')).payload).to.equal({ user: 'john' });
        expect(recorded.sent[0].pulse).to.equal({ recovery: true, expiry: true });
        await srv.publish('/item/1', 'a');
        await until(() => seen.length === 1);

        const back = reconnection(c);
        await dropAll(srv);
        await back;
        expect(calls).to.equal(2);
        await srv.publish('/item/1', 'b');
        await until(() => seen.length === 2);
        expect(seen).to.equal([['a', {}], ['b', {}]]);
        expect(recorded.received.filter((frame) => frame.pulse || frame.position)).to.equal([]);
    });

    it('keeps the newest position per path, adopts reply positions and leaves replayed paths to their publications', async () => {

        const epoch = (e: string, offset: number) => ({ epoch: e, offset });
        const gate: { release: (() => void) | null } = { release: null };
        const server = await raw((ws, message, connection) => {

            const send = (frame: object) => ws.send(JSON.stringify(frame));
            if (message.type === 'sub') {
                send({ type: 'sub', id: message.id, path: message.path, ...(message.path === '/f' ? {} : { pulse: { position: epoch('e1', 9) } }) });
                return;
            }

            if (message.type === 'unsub') {
                send({ type: 'unsub', id: message.id });
                return;
            }

            if (message.type !== 'hello') {
                return;
            }

            const reply = (pulse: object) => send({ type: 'hello', id: message.id, socket: `raw-${connection}`, heartbeat: false, pulse });
            if (connection === 0) {
                reply({ recovery: true, expiry: false, positions: { '/a': epoch('e1', 5), '/gone': epoch('e1', 1) }, recovered: {} });
                send({ type: 'pub', path: '/a', message: 'a7', position: epoch('e1', 7) });
                send({ type: 'pub', path: '/a', message: 'a6', position: epoch('e1', 6) });         // older: kept 7
                send({ type: 'pub', path: '/b', message: 'b3', position: epoch('e1', 3) });         // no reply position
                send({ type: 'pub', path: '/b', message: 'b1', position: epoch('e2', 1) });         // another epoch replaces
                send({ type: 'pub', path: '/c', message: 'c1', position: epoch('e1', 1) });         // not subscribed
                return true;
            }

            if (connection === 1) {
                gate.release = () => reply({ recovery: true, expiry: false, positions: { '/a': epoch('e1', 10), '/b': epoch('e2', 4), '/f': epoch('e1', 2) }, recovered: { '/a': true, '/b': false } });
                return true;
            }

            reply({ recovery: true, expiry: false });
            return true;
        });

        const c = client(server.url, { recovery: true });
        const seen: [string, unknown, SubscriptionFlags][] = [];
        const handler = (path: string) => (message: unknown, flags: SubscriptionFlags) => seen.push([path, message, flags]);
        for (const path of ['/a', '/b', '/gone']) {
            await c.subscribe(path, handler(path));
        }

        await c.connect({ delay: 10, maxDelay: 10 });
        expect(server.connections[0]!.received[0]).to.equal({ type: 'hello', version: '2', subs: ['/a', '/b', '/gone'], pulse: { recovery: true }, id: 1 });
        await c.unsubscribe('/gone');
        await c.subscribe('/d', handler('/d'));                                          // reply position e1:9
        const subscribing = c.subscribe('/e', handler('/e'));                            // unsubscribed before its reply
        await c.unsubscribe('/e');
        await subscribing;
        await c.subscribe('/f', handler('/f'));                                          // reply without position
        server.connections[0]!.ws.send(JSON.stringify({ type: 'revoke', path: '/d' }));
        await until(() => seen.length === 4 && !c.subscriptions().includes('/d'));
        expect(seen.map(([path, message]) => [path, message])).to.equal([['/a', 'a7'], ['/a', 'a6'], ['/b', 'b3'], ['/b', 'b1']]);
        expect(c.subscriptions()).to.equal(['/a', '/b', '/f']);

        // Second connection: the hello carries the newest positions; its reply arrives after an unsubscribe
        server.connections[0]!.ws.terminate();
        await until(() => server.connections.length === 2 && gate.release !== null);
        expect(server.connections[1]!.received[0]).to.equal({
            type: 'hello',
            version: '2',
            subs: ['/a', '/b', '/f'],
            pulse: { recovery: true, positions: { '/a': epoch('e1', 7), '/b': epoch('e2', 1) } },
            id: server.connections[1]!.received[0].id
        });

        await c.unsubscribe('/f');
        gate.release!();
        await until(() => seen.length === 5);
        expect(seen[4]).to.equal(['/b', undefined, { recovered: false }]);

        // Third connection: /a kept its own position (it was being replayed), /b took the server's
        server.connections[1]!.ws.terminate();
        await until(() => server.connections.length === 3 && server.connections[2]!.received.length > 0);
        expect(server.connections[2]!.received[0].pulse).to.equal({ recovery: true, positions: { '/a': epoch('e1', 7), '/b': epoch('e2', 4) } });
    });
});
