// Client tests over real sockets: against a stock @hapi/nes 14 server and against the
// hapi-pulse plugin, and against raw ws servers for behaviour a well-behaved server never shows.

import { once } from 'events';
import * as Http from 'http';
import * as Net from 'net';

import * as Code from '@hapi/code';
import * as Hapi from '@hapi/hapi';
import * as Lab from '@hapi/lab';
import { WebSocket, WebSocketServer } from 'ws';

import { Client, PulseError } from '../lib/client';
import type { DisconnectLog, SubscriptionFlags } from '../lib/client';


const { expect } = Code;
export const lab = Lab.script();
const { before, describe, it, afterEach } = lab;

const Basic = require('@hapi/basic');


// ---- Harness ----

type Teardown = () => unknown;
const teardowns: Teardown[] = [];
const defer = (fn: Teardown) => teardowns.push(fn);

afterEach(async () => {

    while (teardowns.length) {
        await teardowns.pop()!();
    }
});

const wait = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

const until = async (condition: () => boolean, ms = 2000) => {

    const start = Date.now();
    while (!condition()) {
        if (Date.now() - start > ms) {
            throw new Error('Condition not met in time');
        }

        await wait(5);
    }
};

const client = (url: string, options?: ConstructorParameters<typeof Client>[1]) => {

    const c = new Client(url, options);
    c.onError = () => { };
    defer(() => c.disconnect());
    return c;
};

// The server under test: each suite below runs once against @hapi/nes and once against this package's plugin.
let flavour: 'nes' | 'pulse' = 'nes';
const plugin = () => (flavour === 'pulse' ? require('../lib') : require('@hapi/nes'));

interface Harness {
    server: Hapi.Server;
    url: string;
    publish(path: string, message: unknown): void;
    broadcast(message: unknown): void;
    sockets(): any[];
}

interface ServerOptions {
    auth?: false | Record<string, unknown>;
    heartbeat?: false | { interval: number; timeout: number };
    payload?: { maxChunkChars: number };
    onConnection?: (socket: any) => unknown;
}

const start = async (options: ServerOptions = {}): Promise<Harness> => {

    const server = Hapi.server({ host: '127.0.0.1', port: 0 });

    await server.register(Basic);
    server.auth.strategy('basic', 'basic', {
        validate: (_request: unknown, username: string, password: string) => ({ isValid: password === 'secret', credentials: { user: username } })
    });

    await server.register({
        plugin: plugin(),
        options: {
            auth: options.auth ?? false,
            headers: '*',
            heartbeat: options.heartbeat ?? false,
            payload: options.payload,
            onConnection: options.onConnection,
            onMessage: (_socket: unknown, message: any) => {

                if (message === 'boom') {
                    throw new Error('boom');
                }

                return { echo: message };
            }
        }
    });

    server.route([
        { method: 'GET', path: '/', options: { auth: false, handler: () => 'hello' } },
        { method: 'POST', path: '/echo', options: { auth: false, handler: (request) => ({ payload: request.payload, header: request.headers['x-test'] }) } },
        { method: 'GET', path: '/slow', options: { auth: false, handler: () => wait(300).then(() => 'slow') } },
        { method: 'GET', path: '/big', options: { auth: false, handler: () => ({ text: 'x'.repeat(5000) }) } },
        { method: 'GET', path: '/me', options: { auth: 'basic', handler: (request) => request.auth.credentials } }
    ]);

    const decorated = server as any;
    decorated.subscription('/items/{id}');
    decorated.subscription('/news');
    decorated.subscription('/private', { auth: { mode: 'required' } });

    await server.start();
    defer(() => server.stop({ timeout: 100 }));

    return {
        server,
        url: `ws://127.0.0.1:${server.info.port}`,
        publish: (path, message) => decorated.publish(path, message),
        broadcast: (message) => decorated.broadcast(message),
        sockets: () => {

            const sockets: any[] = [];
            decorated.eachSocket((socket: any) => sockets.push(socket));
            return sockets;
        }
    };
};

// A bare ws server for protocol edge cases: answers hello unless told otherwise, records every frame received.
interface Raw {
    url: string;
    port: number;
    received: any[];
    sockets: WebSocket[];
    close(): void;
}

const raw = async (onMessage?: (ws: WebSocket, message: any) => void, hello: Record<string, unknown> = {}): Promise<Raw> => {

    const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
    await once(wss, 'listening');

    const received: any[] = [];
    const sockets: WebSocket[] = [];
    wss.on('connection', (ws) => {

        sockets.push(ws);
        ws.on('message', (data) => {

            const message = JSON.parse(data.toString());
            received.push(message);
            if (message.type === 'hello' && !hello.skip) {
                ws.send(JSON.stringify({ type: 'hello', id: message.id, socket: 'raw-socket', heartbeat: false, ...hello }));
                return;
            }

            onMessage?.(ws, message);
        });
    });

    const port = (wss.address() as Net.AddressInfo).port;
    const result = {
        url: `ws://127.0.0.1:${port}`,
        port,
        received,
        sockets,
        close: () => {

            for (const ws of wss.clients) {
                ws.terminate();
            }

            wss.close();
        }
    };

    defer(result.close);
    return result;
};

const basic = (user: string, password = 'secret') => 'Basic ' + Buffer.from(`${user}:${password}`).toString('base64');


// ---- Tests ----

// The same suite against a stock @hapi/nes 14 server and against this package's plugin.
for (const kind of ['nes', 'pulse'] as const) {
    describe(`Client against ${kind === 'nes' ? '@hapi/nes' : 'hapi-pulse'}`, () => {

        before(() => {

            flavour = kind;
        });


        describe('connect()', () => {

            it('connects, receives the socket id and calls onConnect', async () => {

                const { url } = await start();
                const c = client(url);
                let connected = 0;
                c.onConnect = () => ++connected;

                expect(c.id).to.be.null();
                await c.connect();
                expect(c.id).to.be.a.string();
                expect(connected).to.equal(1);

                const res = await c.request('/');
                expect(res.payload).to.equal('hello');
                expect(res.statusCode).to.equal(200);
                expect(res.headers['content-type']).to.contain('text/html');
            });

            it('refuses a second connect()', async () => {

                const { url } = await start();
                const c = client(url);
                await c.connect({ reconnect: false });
                await expect(c.connect()).to.reject(PulseError, 'Already connected');

                const d = client(url);
                await d.connect();
                await expect(d.connect()).to.reject(PulseError, 'Cannot connect while client attempts to reconnect');       // checked first, as nes
            });

            it('refuses connect() while reconnecting', async () => {

                const harness = await start();
                const c = client(harness.url);
                await c.connect({ delay: 1000 });

                const disconnected = new Promise<boolean>((resolve) => (c.onDisconnect = resolve));
                await harness.sockets()[0].disconnect();
                expect(await disconnected).to.be.true();
                const err = await expect(c.connect()).to.reject(PulseError, 'Cannot connect while client attempts to reconnect');
                expect(err.type).to.equal('user');
            });

            it('rejects with a ws error when the server is not listening (no reconnect)', async () => {

                const port = await closedPort();
                const c = client(`ws://127.0.0.1:${port}`);
                let disconnects = 0;
                c.onDisconnect = () => ++disconnects;

                const err = await expect(c.connect({ reconnect: false })).to.reject(PulseError, 'Socket error');
                expect(err.type).to.equal('ws');
                expect(err.isNes).to.be.true();
                expect(err.isPulse).to.be.true();
                expect(disconnects).to.equal(0);
            });

            it('rejects with a ws error on an invalid url', async () => {

                const c = client('not a url');
                const err = await expect(c.connect()).to.reject(PulseError);
                expect(err.type).to.equal('ws');
                expect(err.cause).to.be.an.error();
            });

            it('reports a non-Error thrown by the WebSocket constructor', async () => {

                const original = Client.WebSocket;
                Client.WebSocket = function () {

                    throw 'nope';                   // eslint-disable-line no-throw-literal
                } as any;

                try {
                    const c = client('ws://127.0.0.1:1');
                    const err = await expect(c.connect()).to.reject(PulseError, 'nope');
                    expect(err.type).to.equal('ws');
                }
                finally {
                    Client.WebSocket = original;
                }
            });

            it('uses Client.WebSocket when set, with the ws options and a 16 MiB maxPayload default', async () => {

                const { url } = await start();
                const original = Client.WebSocket;
                const seen: any[] = [];
                Client.WebSocket = class extends WebSocket {

                    constructor(address: string, options: any) {

                        seen.push(options);
                        super(address, options);
                    }
                } as any;

                try {
                    const c = client(url, { ws: { headers: { 'x-custom': 'a' } } });
                    await c.connect();
                    const d = client(url, { ws: { maxPayload: 100 } });
                    await d.connect();
                }
                finally {
                    Client.WebSocket = original;
                }

                expect(seen).to.equal([{ maxPayload: 16 * 1024 * 1024, headers: { 'x-custom': 'a' } }, { maxPayload: 100 }]);
            });

            it('times out opening a socket that never completes the handshake', async () => {

                const tcp = Net.createServer(() => { });
                const sockets: Net.Socket[] = [];
                tcp.on('connection', (socket) => sockets.push(socket));
                tcp.listen(0, '127.0.0.1');
                await once(tcp, 'listening');
                defer(() => {

                    sockets.forEach((socket) => socket.destroy());
                    tcp.close();
                });

                const c = client(`ws://127.0.0.1:${(tcp.address() as Net.AddressInfo).port}`);
                const err = await expect(c.connect({ timeout: 50, reconnect: false })).to.reject(PulseError, 'Connection timed out');
                expect(err.type).to.equal('timeout');
            });

            it('times out a hello that is never answered, then keeps trying when reconnect is on', async () => {

                const server = await raw(undefined, { skip: true });
                const c = client(server.url);
                const errors: PulseError[] = [];
                c.onError = (err) => errors.push(err);

                const err = await expect(c.connect({ timeout: 100, delay: 10, maxDelay: 10 })).to.reject(PulseError, 'Connection timed out');
                expect(err.type).to.equal('timeout');

                await until(() => errors.length >= 1 && server.received.filter((m) => m.type === 'hello').length >= 2);
                expect(errors[0].type).to.equal('timeout');
                await c.disconnect();
            });

            it('rejects when the server drops the socket during the hello', async () => {

                const server = await raw(undefined, { skip: true });
                const wss = server.sockets;
                const c = client(server.url);
                const connecting = c.connect({ reconnect: false });
                await until(() => server.received.length === 1);
                wss[0].close();
                const err = await expect(connecting).to.reject(PulseError, 'Request failed - server disconnected');
                expect(err.type).to.equal('disconnect');
            });

            it('rejects auth that cannot be serialised and stops', async () => {

                const server = await raw();
                const c = client(server.url);
                const auth: Record<string, unknown> = {};
                auth.self = auth;
                const err = await expect(c.connect({ auth })).to.reject(PulseError);
                expect(err.type).to.equal('user');
                expect(c.overrideReconnectionAuth('x')).to.be.false();
            });

            it('sends negotiated extensions from the _extensions() hook', async () => {

                class Extended extends Client {

                    protected override _extensions() {

                        return { recovery: true };
                    }
                }

                const server = await raw();
                const c = new Extended(server.url);
                defer(() => c.disconnect());
                await c.connect();
                expect(server.received[0]).to.equal({ type: 'hello', version: '2', pulse: { recovery: true }, id: 1 });
            });

            it('reconnects when the initial connection fails', async () => {

                const port = await closedPort();
                const c = client(`ws://127.0.0.1:${port}`);
                const logs: DisconnectLog[] = [];
                const errors: PulseError[] = [];
                c.onDisconnect = (_willReconnect, log) => logs.push(log);
                c.onError = (err) => errors.push(err);

                await expect(c.connect({ delay: 5, maxDelay: 10, retries: 2 })).to.reject(PulseError, 'Connection terminated while waiting to connect');
                await until(() => errors.length === 2);
                expect(logs.map((log) => log.willReconnect)).to.equal([true, true]);
                expect(logs[0]).to.include({ code: 1006, explanation: 'Abnormal closure', wasClean: false, wasRequested: false });
                expect(errors.map((err) => [err.message, err.type])).to.equal([['Connection terminated while waiting to connect', 'ws'], ['Socket error', 'ws']]);
            });

            it('uses the default onError (console.error)', async () => {

                const port = await closedPort();
                const c = new Client(`ws://127.0.0.1:${port}`);
                const original = console.error;
                const logged: unknown[] = [];
                console.error = (err: unknown) => logged.push(err);
                try {
                    await expect(c.connect({ delay: 1, retries: 1 })).to.reject();
                    await until(() => logged.length === 1);
                }
                finally {
                    console.error = original;
                }

                expect((logged[0] as PulseError).type).to.equal('ws');
                await c.disconnect();
            });
        });

        describe('auth', () => {

            it('authenticates with direct auth headers', async () => {

                const { url } = await start({ auth: { type: 'direct', route: 'basic' } });
                const c = client(url);
                await c.connect({ auth: { headers: { authorization: basic('john') } } });
                const res = await c.request<{ user: string }>('/me');
                expect(res.payload.user).to.equal('john');
            });

            it('fails hello with bad credentials and does not reconnect', async () => {

                const { url } = await start({ auth: { type: 'direct', route: 'basic' } });
                const c = client(url);
                let disconnects = 0;
                c.onDisconnect = () => ++disconnects;
                const err = await expect(c.connect({ auth: { headers: { authorization: basic('john', 'bad') } } })).to.reject(PulseError);
                expect(err.type).to.equal('server');
                expect(err.statusCode).to.equal(401);
                expect(err.data).to.include({ error: 'Unauthorized' });
                expect(c.overrideReconnectionAuth('x')).to.be.false();
                await wait(50);
                expect(disconnects).to.equal(1);
            });

            it('authenticates with a token from the auth endpoint', async () => {

                const { url, server } = await start({ auth: { type: 'token', route: 'basic' } });
                const res = await server.inject({ url: '/nes/auth', headers: { authorization: basic('jane') } });
                const token = (res.result as { token: string }).token;
                expect(token).to.be.a.string();

                const c = client(url);
                await c.connect({ auth: token });
                expect((await c.request('/me')).payload).to.equal({ user: 'jane' });
            });

            it('authenticates with a cookie (ws headers)', async () => {

                const { url, server } = await start({ auth: { type: 'cookie', route: 'basic', isSecure: false } });
                const res = await server.inject({ url: '/nes/auth', headers: { authorization: basic('jim') } });
                const cookie = (res.headers['set-cookie'] as string[])[0].split(';')[0];

                const c = client(url, { ws: { headers: { cookie } } });
                await c.connect();
                expect((await c.request('/me')).payload).to.equal({ user: 'jim' });
            });

            it('reauthenticates and overrides the reconnection auth', async () => {

                const { url, server } = await start({ auth: { type: 'token', route: 'basic' } });
                const token = async (user: string) => ((await server.inject({ url: '/nes/auth', headers: { authorization: basic(user) } })).result as { token: string }).token;

                const c = client(url);
                await c.connect({ auth: await token('a'), delay: 10 });
                expect(await c.reauthenticate(await token('b'))).to.be.true();
                expect((await c.request('/me')).payload).to.equal({ user: 'b' });

                // The overridden credentials are used when reconnecting
                expect(c.overrideReconnectionAuth(await token('c'))).to.be.true();
                const reconnected = new Promise<void>((resolve) => (c.onConnect = resolve));
                await harnessSockets(server)[0].disconnect();
                await reconnected;
                expect((await c.request('/me')).payload).to.equal({ user: 'c' });

                const err = await expect(c.reauthenticate('not a token')).to.reject(PulseError, 'Invalid token');
                expect(err.statusCode).to.equal(401);
            });
        });

        describe('request()', () => {

            it('sends method, headers and payload', async () => {

                const { url } = await start();
                const c = client(url);
                await c.connect();
                const res = await c.request<{ payload: unknown; header: string }>({ method: 'POST', path: '/echo', headers: { 'x-test': 'yes' }, payload: { a: 1 } });
                expect(res.payload).to.equal({ payload: { a: 1 }, header: 'yes' });
            });

            it('rejects with a server error', async () => {

                const { url } = await start();
                const c = client(url);
                await c.connect();
                const err = await expect(c.request('/missing')).to.reject(PulseError, 'Not Found');
                expect(err.type).to.equal('server');
                expect(err.statusCode).to.equal(404);
                expect(err.data).to.include({ error: 'Not Found', message: 'Not Found' });
                expect(err.headers).to.be.an.object();
            });

            it('rejects when not connected', async () => {

                const c = client('ws://127.0.0.1:1');
                const err = await expect(c.request('/')).to.reject(PulseError, 'Failed to send message - server disconnected');
                expect(err.type).to.equal('disconnect');
            });

            it('rejects a payload that cannot be serialised', async () => {

                const { url } = await start();
                const c = client(url);
                await c.connect();
                const payload: Record<string, unknown> = {};
                payload.self = payload;
                const err = await expect(c.request({ path: '/echo', method: 'POST', payload })).to.reject(PulseError);
                expect(err.type).to.equal('user');

                const big = 10n;
                await expect(c.message(big)).to.reject(PulseError);
            });

            it('times out', async () => {

                const { url } = await start();
                const c = client(url, { timeout: 50 });
                const errors: PulseError[] = [];
                await c.connect();
                c.onError = (err) => errors.push(err);
                const err = await expect(c.request('/slow')).to.reject(PulseError, 'Request timed out');
                expect(err.type).to.equal('timeout');

                // The late answer is dropped quietly and the connection stays usable
                await wait(350);
                expect(errors).to.equal([]);
                expect((await c.request('/')).payload).to.equal('hello');
            });

            it('rejects every pending request on disconnect', async () => {

                const { url } = await start();
                const c = client(url, { timeout: 5000 });
                await c.connect();
                const logs: DisconnectLog[] = [];
                c.onDisconnect = (_willReconnect, log) => logs.push(log);

                const pending = [c.request('/slow'), c.request('/slow'), c.message('x')];
                await c.disconnect();
                for (const request of pending) {
                    const err = await expect(request).to.reject(PulseError, 'Request failed - server disconnected');
                    expect(err.type).to.equal('disconnect');
                }

                expect(logs).to.have.length(1);
                expect(logs[0]).to.include({ willReconnect: false, wasRequested: true, code: 1005, explanation: 'No status received' });
            });

            it('resolves concurrent disconnect() calls and a disconnect() when idle', async () => {

                const { url } = await start();
                const c = client(url);
                await c.disconnect();
                await c.connect();
                await Promise.all([c.disconnect(), c.disconnect()]);
                expect(c.id).to.be.null();
            });

            it('disconnects while the socket is still connecting', async () => {

                const { url } = await start();
                const c = client(url);
                const connecting = c.connect();
                await c.disconnect();
                await expect(connecting).to.reject(PulseError);
            });
        });

        describe('message()', () => {

            it('sends a message and receives the reply', async () => {

                const { url } = await start();
                const c = client(url);
                await c.connect();
                const res = await c.message<{ echo: string }>('hi');
                expect(res.payload.echo).to.equal('hi');

                const err = await expect(c.message('boom')).to.reject(PulseError);
                expect(err.statusCode).to.equal(500);
            });
        });

        describe('updates', () => {

            it('receives broadcasts and socket.send() through onUpdate', async () => {

                const harness = await start();
                const c = client(harness.url);
                const updates: unknown[] = [];
                c.onUpdate = (message) => updates.push(message);
                await c.connect();

                harness.broadcast({ a: 1 });
                await harness.sockets()[0].send('direct');
                await until(() => updates.length === 2);
                expect(updates).to.equal([{ a: 1 }, 'direct']);
            });
        });

        describe('subscribe()', () => {

            it('receives publications until unsubscribed', async () => {

                const harness = await start();
                const c = client(harness.url);
                await c.connect();

                const a: unknown[] = [];
                const b: unknown[] = [];
                const handlerA = (message: { n: number }, flags: SubscriptionFlags) => a.push([message.n, flags]);
                const handlerB = (message: unknown) => b.push(message);
                await c.subscribe('/items/5', handlerA);
                await c.subscribe('/items/5', handlerA);           // same handler: ignored
                await c.subscribe('/items/5', handlerB);
                expect(c.subscriptions()).to.equal(['/items/5']);

                harness.publish('/items/5', { n: 1 });
                harness.publish('/items/6', { n: 2 });
                await until(() => b.length === 1);
                expect(a).to.equal([[1, {}]]);

                await c.unsubscribe('/items/5', handlerA);
                await c.unsubscribe('/items/5', handlerA);         // not registered any more
                harness.publish('/items/5', { n: 3 });
                await until(() => b.length === 2);
                expect(a).to.have.length(1);

                await c.unsubscribe('/items/5', handlerB);
                expect(c.subscriptions()).to.equal([]);
                await c.unsubscribe('/items/5');                  // unknown path
                harness.publish('/items/5', { n: 4 });
                await wait(30);
                expect(b).to.have.length(2);
            });

            it('unsubscribes every handler of a path at once', async () => {

                const harness = await start();
                const c = client(harness.url);
                await c.connect();
                const seen: unknown[] = [];
                await c.subscribe('/news', (message) => seen.push(message));
                await c.subscribe('/news', (message) => seen.push(message));
                await c.unsubscribe('/news', null);
                harness.publish('/news', 'x');
                await wait(30);
                expect(seen).to.equal([]);
            });

            it('rejects invalid paths and handlers', async () => {

                const c = client('ws://127.0.0.1:1');
                await expect(c.subscribe('items', () => { })).to.reject(PulseError, 'Invalid path');
                await expect(c.subscribe('', () => { })).to.reject(PulseError, 'Invalid path');
                await expect(c.subscribe('/items', null as any)).to.reject(PulseError, 'Invalid handler');
                await expect(c.unsubscribe('items')).to.reject(PulseError, 'Invalid path');
                await expect(c.unsubscribe('')).to.reject(PulseError, 'Invalid path');
            });

            it('drops a subscription the server refuses', async () => {

                const { url } = await start();
                const c = client(url);
                await c.connect();
                const err = await expect(c.subscribe('/unknown', () => { })).to.reject(PulseError, 'Subscription not found');
                expect(err.statusCode).to.equal(404);
                expect(c.subscriptions()).to.equal([]);

                await expect(c.subscribe('/private', () => { })).to.reject(PulseError);
                expect(c.subscriptions()).to.equal([]);
            });

            it('sends subscriptions made while disconnected in the next hello', async () => {

                const harness = await start();
                const c = client(harness.url);
                const seen: unknown[] = [];
                await c.subscribe('/items/1', (message) => seen.push(message));
                expect(c.subscriptions()).to.equal(['/items/1']);
                await c.unsubscribe('/items/1');
                await c.subscribe('/items/2', (message) => seen.push(message));
                await c.connect();

                harness.publish('/items/1', 'one');
                harness.publish('/items/2', 'two');
                await until(() => seen.length === 1);
                await wait(20);
                expect(seen).to.equal(['two']);
            });

            it('fails the connection when a hello subscription is refused, dropping that path', async () => {

                const { url } = await start();
                const c = client(url);
                await c.subscribe('/unknown', () => { });
                await c.subscribe('/news', () => { });
                const err = await expect(c.connect()).to.reject(PulseError, 'Subscription not found');
                expect(err.path).to.equal('/unknown');
                expect(c.subscriptions()).to.equal(['/news']);
                expect(c.overrideReconnectionAuth('x')).to.be.false();
            });

            it('catches up with subscription changes made while the hello is in flight', async () => {

                let release!: () => void;
                const inHello = new Promise<void>((resolve) => (release = resolve));
                const gate = new Promise<void>((resolve) => setTimeout(resolve, 100));
                const harness = await start({ onConnection: () => (release(), gate) });

                const c = client(harness.url);
                const seen: unknown[] = [];
                await c.subscribe('/items/1', (message) => seen.push(['1', message]));
                const connecting = c.connect();
                await inHello;

                await c.subscribe('/items/2', (message) => seen.push(['2', message]));       // after the hello went out
                await c.unsubscribe('/items/1');                                           // was in the hello
                await expect(c.request('/')).to.reject(PulseError, 'Failed to send message - server disconnected');
                await connecting;
                await wait(30);

                harness.publish('/items/1', 'a');
                harness.publish('/items/2', 'b');
                await until(() => seen.length === 1);
                await wait(20);
                expect(seen).to.equal([['2', 'b']]);
            });

            it('queues a subscription made while the socket is closing', async () => {

                const harness = await start();
                const c = client(harness.url);
                await c.connect({ reconnect: false });
                const closing = c.disconnect();
                await c.subscribe('/news', () => { });
                await closing;
                expect(c.subscriptions()).to.equal(['/news']);
            });

            it('handles revocations', async () => {

                const harness = await start();
                const c = client(harness.url);
                await c.connect();
                const seen: unknown[] = [];
                await c.subscribe('/items/1', (message, flags) => seen.push([message, flags]));
                await c.subscribe('/items/2', (message, flags) => seen.push([message, flags]));

                const [socket] = harness.sockets();
                await socket.revoke('/items/1', 'bye');
                await socket.revoke('/items/2', null);              // no message: handlers not called
                await until(() => c.subscriptions().length === 0);
                expect(seen).to.equal([['bye', { revoked: true }]]);
            });

            it('isolates a throwing handler and reports it through onError', async () => {

                const harness = await start();
                const c = client(harness.url);
                const errors: PulseError[] = [];
                c.onError = (err) => {

                    errors.push(err);
                    throw new Error('onError throws too');        // swallowed
                };

                await c.connect();
                const seen: unknown[] = [];
                await c.subscribe('/news', () => {

                    throw new Error('handler failed');
                });

                await c.subscribe('/news', (message) => seen.push(message));
                harness.publish('/news', 'x');
                await until(() => seen.length === 1);
                expect(errors).to.have.length(1);
                expect(errors[0].type).to.equal('user');
                expect(errors[0].message).to.equal('handler failed');
            });

            // A server that refuses the first subs of each path with the statuses given for it, in order, then
            // accepts them (and publishes 'live' to the path); refusals after `lag` ms
            const refusing = (refusals: Record<string, number[]>, lag = 0) => raw((ws, message) => {

                if (message.type === 'unsub') {
                    ws.send(JSON.stringify({ type: 'unsub', id: message.id }));
                    return;
                }

                const statusCode = refusals[message.path]?.shift();
                if (statusCode) {
                    const refusal = JSON.stringify({ type: 'sub', id: message.id, statusCode, payload: { error: 'Unavailable', message: `Refused with ${statusCode}` } });
                    return lag ? setTimeout(() => ws.send(refusal), lag) : ws.send(refusal);
                }

                ws.send(JSON.stringify({ type: 'sub', id: message.id }));
                ws.send(JSON.stringify({ type: 'pub', path: message.path, message: 'live' }));
            });

            const subsOf = (server: { received: any[] }) => server.received.filter((message) => message.type === 'sub').map((message) => message.path);

            it('sends again a sub refused by a transient server error (502, 503, 504) with the reconnection backoff', async () => {

                const server = await refusing({ '/a': [502, 503, 504] });
                const c = client(server.url);
                await c.connect({ delay: 20, maxDelay: 40, jitter: 0 });
                const seen: unknown[] = [];
                const started = Date.now();
                await c.subscribe('/a', (message) => seen.push(message));
                expect(Date.now() - started).to.be.at.least(20 + 40 + 40 - 5);       // 20, 40, then capped at maxDelay
                expect(subsOf(server)).to.equal(['/a', '/a', '/a', '/a']);
                expect(c.subscriptions()).to.equal(['/a']);
                await until(() => seen.length === 1);
                expect(seen).to.equal(['live']);
            });

            it('gives up after `retries` transient refusals, and without reconnection retries none (as nes)', async () => {

                const bounded = await refusing({ '/a': [503, 503, 503] });
                const c = client(bounded.url);
                await c.connect({ delay: 5, retries: 2 });
                const err = await expect(c.subscribe('/a', () => { })).to.reject(PulseError, 'Refused with 503');
                expect(err.statusCode).to.equal(503);
                expect(subsOf(bounded)).to.equal(['/a', '/a', '/a']);
                expect(c.subscriptions()).to.equal([]);

                const once = await refusing({ '/a': [503] });
                const plain = client(once.url);
                await plain.connect({ reconnect: false });
                await expect(plain.subscribe('/a', () => { })).to.reject(PulseError, 'Refused with 503');
                await wait(30);
                expect(subsOf(once)).to.equal(['/a']);
                expect(plain.subscriptions()).to.equal([]);
            });

            it('drops a sub refused by any other error at once (as nes)', async () => {

                const server = await refusing({ '/a': [404], '/b': [500] });
                const c = client(server.url);
                await c.connect({ delay: 5 });
                expect((await expect(c.subscribe('/a', () => { })).to.reject(PulseError)).statusCode).to.equal(404);
                expect((await expect(c.subscribe('/b', () => { })).to.reject(PulseError)).statusCode).to.equal(500);
                await wait(30);
                expect(subsOf(server)).to.equal(['/a', '/b']);
                expect(c.subscriptions()).to.equal([]);
            });

            it('stops sending a refused sub again once unsubscribed or the connection is lost', async () => {

                const server = await refusing({ '/a': [503, 503], '/b': [503] });
                const c = client(server.url);
                await c.connect({ delay: 50, jitter: 0 });

                // unsubscribe(): the sub rejects with its refusal; subscribing the path again right away is a new
                // subscription that the old one's failure leaves alone
                const unsubscribed = expect(c.subscribe('/a', () => { })).to.reject(PulseError, 'Refused with 503');
                await until(() => subsOf(server).length === 1);
                const unsub = c.unsubscribe('/a');
                const seen: unknown[] = [];
                const again = c.subscribe('/a', (message) => seen.push(message));     // refused once, then sent again
                await unsubscribed;
                await unsub;
                await again;
                await until(() => seen.length === 1);
                expect(c.subscriptions()).to.equal(['/a']);
                expect(subsOf(server)).to.equal(['/a', '/a', '/a']);

                // the connection lost: the sub rejects as one in flight does, and its path is dropped
                const lost = expect(c.subscribe('/b', () => { })).to.reject(PulseError, 'Request failed - server disconnected');
                await until(() => subsOf(server).length === 4);
                server.sockets[0]!.terminate();
                await lost;
                expect(c.subscriptions()).to.equal(['/a']);
                await wait(120);                                  // past the backoff: nothing sent again
                expect(subsOf(server).filter((path) => path === '/b')).to.equal(['/b']);
            });

            it('does not send again a sub refused after it was unsubscribed', async () => {

                const server = await refusing({ '/a': [503] }, 30);
                const c = client(server.url);
                await c.connect({ delay: 5 });
                const refused = expect(c.subscribe('/a', () => { })).to.reject(PulseError, 'Refused with 503');
                await until(() => subsOf(server).length === 1);
                await c.unsubscribe('/a');
                await refused;
                await wait(40);
                expect(subsOf(server)).to.equal(['/a']);
                expect(c.subscriptions()).to.equal([]);
            });

            it('stops sending a refused sub again on disconnect()', async () => {

                const server = await refusing({ '/a': [503] });
                const c = client(server.url);
                await c.connect({ delay: 50 });
                const refused = expect(c.subscribe('/a', () => { })).to.reject(PulseError, 'Request failed - server disconnected');
                await until(() => subsOf(server).length === 1);
                await c.disconnect();
                await refused;
                expect(c.subscriptions()).to.equal([]);
                await wait(80);
                expect(subsOf(server)).to.equal(['/a']);
            });
        });

        describe('chunked payloads', () => {

            it('reassembles responses and publications split by maxChunkChars', async () => {

                const harness = await start({ payload: { maxChunkChars: 100 } });
                const c = client(harness.url);
                await c.connect();

                const res = await c.request<{ text: string }>('/big');
                expect(res.payload.text).to.equal('x'.repeat(5000));

                const seen: string[] = [];
                await c.subscribe('/news', (message: string) => seen.push(message));
                harness.publish('/news', 'y'.repeat(1000));
                await until(() => seen.length === 1);
                expect(seen[0]).to.equal('y'.repeat(1000));
            });
        });

        describe('heartbeat', () => {

            it('answers server pings and stays connected', async () => {

                const harness = await start({ heartbeat: { interval: 600, timeout: 500 } });       // room for a slow pong
                const c = client(harness.url);
                let disconnects = 0;
                c.onDisconnect = () => ++disconnects;
                await c.connect();

                // Counted by the pongs sent: once the third went out, two heartbeat checks have passed.
                let pongs = 0;
                const ws = (c as any)._ws;
                const send = ws.send.bind(ws);
                ws.send = (data: string) => {

                    pongs += JSON.parse(data).type === 'ping' ? 1 : 0;
                    send(data);
                };

                await until(() => pongs >= 3 || disconnects > 0, 6000);
                expect(disconnects).to.equal(0);
                expect((await c.request('/')).payload).to.equal('hello');
            });

            it('sends exactly what the nes client sends in reply to a ping', async () => {

                const server = await raw(undefined, { socket: undefined });
                const c = client(server.url);
                await c.connect();
                expect(c.id).to.be.null();
                server.sockets[0].send(JSON.stringify({ type: 'ping' }));
                await until(() => server.received.length === 2);
                expect(server.received[1]).to.equal({ type: 'ping', id: 2 });
            });

            it('drops a silent connection after interval + timeout and reconnects', async () => {

                const server = await raw(undefined, { heartbeat: { interval: 30, timeout: 20 } });
                const c = client(server.url);
                const errors: PulseError[] = [];
                const logs: DisconnectLog[] = [];
                const timeouts: boolean[] = [];
                c.onError = (err) => errors.push(err);
                c.onHeartbeatTimeout = (willReconnect) => timeouts.push(willReconnect);
                c.onDisconnect = (_willReconnect, log) => logs.push(log);
                let connects = 0;
                c.onConnect = () => ++connects;

                const started = Date.now();
                await c.connect({ delay: 10 });
                await until(() => connects >= 2);
                expect(Date.now() - started).to.be.at.least(45);
                expect(errors[0].type).to.equal('timeout');
                expect(errors[0].message).to.equal('Disconnecting due to heartbeat timeout');
                expect(timeouts[0]).to.be.true();
                expect(logs[0]).to.include({ code: 4001, reason: 'Heartbeat timeout', wasClean: false, willReconnect: true });
                await c.disconnect();
            });
        });

        describe('reconnection', () => {

            it('reconnects and resubscribes after the server drops the socket', async () => {

                const harness = await start();
                const c = client(harness.url);
                await c.connect({ delay: 10 });
                const seen: unknown[] = [];
                await c.subscribe('/items/1', (message) => seen.push(message));
                const firstId = c.id;

                const logs: DisconnectLog[] = [];
                c.onDisconnect = (_willReconnect, log) => logs.push(log);
                const reconnected = new Promise<void>((resolve) => (c.onConnect = resolve));
                const pending = c.request('/slow');
                await harness.sockets()[0].disconnect();
                await expect(pending).to.reject(PulseError, 'Request failed - server disconnected');
                await reconnected;

                expect(logs[0]).to.include({ willReconnect: true, wasRequested: false, code: 1005 });
                expect(c.id).to.not.equal(firstId);
                expect(c.subscriptions()).to.equal(['/items/1']);
                harness.publish('/items/1', 'again');
                await until(() => seen.length === 1);
            });

            it('stops after the configured number of consecutive failures', async () => {

                const harness = await start();
                const c = client(harness.url);
                const logs: DisconnectLog[] = [];
                c.onDisconnect = (_willReconnect, log) => logs.push(log);
                await c.connect({ delay: 5, maxDelay: 10, retries: 2 });
                await harness.server.stop();

                await until(() => logs.length === 2);
                expect(logs.map((log) => log.willReconnect)).to.equal([true, true]);            // the last failed attempt is not a disconnection
                await wait(50);
                expect(logs.length).to.equal(2);
            });

            it('does not retry when retries is 0', async () => {

                const harness = await start();
                const c = client(harness.url);
                const logs: DisconnectLog[] = [];
                c.onDisconnect = (_willReconnect, log) => logs.push(log);
                await c.connect({ retries: 0 });
                await harness.sockets()[0].disconnect();
                await until(() => logs.length === 1);
                expect(logs[0].willReconnect).to.be.false();
            });

            it('backs off exponentially up to maxDelay', async () => {

                // Delays long enough that the slack a loaded machine needs still tells 400 (capped) from 800 (not)
                const attempts = await reconnectAttempts({ delay: 100, maxDelay: 400, jitter: 0, retries: 6 }, 6, 6000);
                const gaps = attempts.slice(1).map((at, i) => at - attempts[i]);
                const expected = [100, 200, 400, 400, 400];
                gaps.forEach((gap, i) => {

                    expect(gap).to.be.at.least(expected[i] - 1);        // a timer never fires early
                    expect(gap).to.be.below(expected[i] + 350);         // slack for a loaded machine
                });
            });

            it('spreads reconnecting clients with jitter, within [delay * (1 - jitter), delay]', async () => {

                const server = await refusingServer();
                const firsts = await Promise.all(Array.from({ length: 20 }, async () => {

                    const c = client(server.url);
                    let failed = 0;
                    c.onDisconnect = () => (failed ||= Date.now());           // right before the retry is scheduled
                    const retried = new Promise<number>((resolve) => (c.onError = () => resolve(Date.now())));
                    await expect(c.connect({ delay: 200, jitter: 0.5 })).to.reject();
                    const at = await retried;
                    await c.disconnect();
                    return at - failed;
                }));

                for (const first of firsts) {
                    expect(first).to.be.at.least(99);
                    expect(first).to.be.below(600);                        // 200 plus slack for a loaded machine
                }

                // Not in lock-step: 20 uniform draws over 100 ms are spread far more than 10 ms
                expect(Math.max(...firsts) - Math.min(...firsts)).to.be.at.least(10);
            });

            it('clamps jitter to 0..1', async () => {

                const attempts = await reconnectAttempts({ delay: 30, jitter: 7, retries: 2 }, 3);
                expect(attempts[1] - attempts[0]).to.be.below(40);
            });
        });

        describe('protocol errors', () => {

            it('sends the same frames as the nes client', async () => {

                const script = async (c: any) => {

                    c.onError = () => { };
                    await c.subscribe('/a', () => { });
                    await c.connect({ auth: { headers: { authorization: 'x' } } });
                    await c.request({ path: '/r', method: 'PUT', headers: { a: 'b' }, payload: { c: 1 } });
                    await c.request('/s');
                    await c.message({ m: 1 });
                    await c.subscribe('/b', () => { });
                    await c.unsubscribe('/b');
                    await c.reauthenticate('token');
                    await c.disconnect();
                };

                const frames = async (make: (url: string) => any) => {

                    const server = await raw((ws, message) => ws.send(JSON.stringify({ type: message.type, id: message.id, statusCode: 200, payload: null })));
                    await script(make(server.url));
                    return server.received;
                };

                const Nes = require('@hapi/nes');
                const expected = await frames((url) => new Nes.Client(url));
                const actual = await frames((url) => new Client(url));
                expect(actual).to.equal(expected);
                expect(actual[0]).to.equal({ type: 'hello', version: '2', auth: { headers: { authorization: 'x' } }, subs: ['/a'], id: 1 });
            });

            it('reports malformed frames through onError and keeps the connection', async () => {

                const server = await raw((ws, message) => {

                    if (message.type === 'request') {
                        ws.send(JSON.stringify({ type: 'request', id: message.id, statusCode: 200, payload: 'ok' }));
                    }
                });

                const c = client(server.url, { maxMessageChars: 1000 });
                const errors: PulseError[] = [];
                c.onError = (err) => errors.push(err);
                const updates: unknown[] = [];
                c.onUpdate = (message) => updates.push(message);
                await c.connect();

                const ws = server.sockets[0];
                const frames: (string | Buffer)[] = [
                    'not json',
                    '[1,2]',
                    'null',
                    '{"type":5}',
                    '{"type":"pub","message":1}',
                    '{"type":"request","id":1,"statusCode":"200"}',
                    Buffer.from('binary'),
                    '{"type":"request","id":999,"payload":1}',
                    '{"statusCode":400,"payload":{"error":"Bad Request","message":"Cannot parse message"}}',
                    '+{"type":"upd',
                    '{"type":"update","message":"after incomplete"}',
                    'x'.repeat(1001),
                    '{"type":"pub","path":"/x","message":1,"position":{"epoch":1}}',
                    '{"type":"expiring","expiresAt":1}',
                    '{"type":"pub","path":"/nobody","message":1}'
                ];

                for (const frame of frames) {
                    ws.send(frame);
                }

                await until(() => errors.length >= 12);
                const messages = errors.map((err) => [err.type, err.message]);
                expect(messages).to.equal([
                    ['protocol', messages[0][1]],
                    ['protocol', 'Received a message that is not an object'],
                    ['protocol', 'Received a message that is not an object'],
                    ['protocol', 'Received a message with an invalid type'],
                    ['protocol', 'Received a pub message without a path'],
                    ['protocol', 'Received a message with an invalid statusCode'],
                    ['protocol', 'Received a binary message'],
                    ['protocol', 'Received response for unknown request'],
                    ['server', 'Cannot parse message'],
                    ['protocol', 'Received an incomplete message'],
                    ['protocol', 'Message exceeds 1000 characters'],
                    ['protocol', 'Message position must be an object with a string epoch and a non-negative integer offset']
                ] as any);
                expect(updates).to.equal(['after incomplete']);
                expect(errors[0].cause).to.be.an.error(SyntaxError);
                expect(errors[8].statusCode).to.equal(400);

                // Still usable
                expect((await c.request('/')).payload).to.equal('ok');
            });

            it('names a server error from payload.error, or Error', async () => {

                const server = await raw((ws, message) => {

                    const payloads: Record<string, unknown> = { '/a': { error: 'Teapot' }, '/b': 'text', '/c': { message: '' }, '/d': null };
                    const payload = payloads[message.path];
                    ws.send(JSON.stringify({ type: 'request', id: message.id, statusCode: 418, payload }));
                });

                const c = client(server.url);
                await c.connect();
                await expect(c.request('/a')).to.reject(PulseError, 'Teapot');
                await expect(c.request('/b')).to.reject(PulseError, 'Error');
                await expect(c.request('/c')).to.reject(PulseError, 'Error');
                await expect(c.request('/d')).to.reject(PulseError, 'Error');
            });

            it('rejects a response of an unknown type', async () => {

                const server = await raw((ws, message) => ws.send(JSON.stringify({ type: 'weird', id: message.id })));
                const c = client(server.url);
                const errors: PulseError[] = [];
                c.onError = (err) => errors.push(err);
                await c.connect();
                await expect(c.request('/')).to.reject(PulseError, 'Received invalid response');
                expect(errors[0].message).to.equal('Received unknown response type: weird');
            });

            it('bounds chunk reassembly and skips the rest of an oversized message', async () => {

                const server = await raw((ws, message) => ws.send(JSON.stringify({ type: 'request', id: message.id, statusCode: 200, payload: 'ok' })));
                const c = client(server.url, { maxMessageChars: 100 });
                const errors: PulseError[] = [];
                c.onError = (err) => errors.push(err);
                const updates: unknown[] = [];
                c.onUpdate = (message) => updates.push(message);
                await c.connect();

                const ws = server.sockets[0];
                for (let i = 0; i < 50; ++i) {
                    ws.send('+' + 'a'.repeat(60));             // 3000 characters: far over the bound
                }

                ws.send('!' + 'a'.repeat(10));                 // end of the oversized message: skipped
                ws.send('+{"type":"upda');
                ws.send('!te","message":"fine"}');
                for (let i = 0; i < 3; ++i) {
                    ws.send('+' + 'b'.repeat(60));
                }

                ws.send('{"type":"update","message":"plain"}');   // ends the skipping and is processed
                ws.send('!' + 'c'.repeat(200));                   // a final part alone, over the bound

                await until(() => updates.length === 2 && errors.length === 3);
                expect(updates).to.equal(['fine', 'plain']);
                expect(errors.map((err) => err.type)).to.equal(['protocol', 'protocol', 'protocol']);
                expect(errors[0].message).to.equal('Chunked message exceeds 100 characters');
                expect((await c.request('/')).payload).to.equal('ok');
            });

            it('treats a socket error on an open connection as a disconnect (frame over ws maxPayload)', async () => {

                const server = await raw();
                const c = client(server.url, { ws: { maxPayload: 100 } });
                const logs: DisconnectLog[] = [];
                c.onDisconnect = (_willReconnect, log) => logs.push(log);
                await c.connect({ reconnect: false });
                server.sockets[0].send('x'.repeat(200));
                await until(() => logs.length === 1);
                expect(logs[0]).to.include({ code: 1006, willReconnect: false });
            });

            it('retries a hello refused by a transient server error (502, 503, 504), keeping every subscription and position', async () => {

                const hellos: any[] = [];

                const refusals = [502, 503, 504];
                const server = await raw((ws, message) => {
                    if (message.type !== 'hello') {
                        return;
                    }

                    hellos.push(message);
                    if (hellos.length === 1) {
                        ws.send(JSON.stringify({ type: 'hello', id: message.id, socket: 's', pulse: { recovery: true, expiry: false, positions: { '/h': { epoch: 'e', offset: 4 } }, recovered: {} } }));
                        ws.send(JSON.stringify({ type: 'pub', path: '/h', message: 5, position: { epoch: 'e', offset: 5 } }));
                        setTimeout(() => ws.close(), 10);
                        return;
                    }

                    const statusCode = refusals.shift();
                    if (statusCode) {
                        ws.send(JSON.stringify({ type: 'hello', id: message.id, statusCode, payload: { error: 'Unavailable', message: 'Redis broker unavailable' }, path: '/h' }));
                        return;
                    }

                    ws.send(JSON.stringify({ type: 'hello', id: message.id, socket: 's', pulse: { recovery: true, expiry: false } }));
                }, { skip: true });

                const c = client(server.url, { recovery: true });
                const errors: PulseError[] = [];
                c.onError = (err) => errors.push(err);
                const seen: unknown[] = [];
                await c.subscribe('/h', (message) => seen.push(message));
                await c.subscribe('/other', () => { });
                let connects = 0;
                c.onConnect = () => ++connects;
                await c.connect({ delay: 5, maxDelay: 10 });
                await until(() => connects === 2);

                expect(seen).to.equal([5]);
                expect(errors.map((err) => err.statusCode)).to.equal([502, 503, 504]);
                expect(hellos.length).to.equal(5);
                for (const hello of hellos.slice(1)) {
                    expect(hello.subs).to.equal(['/h', '/other']);
                    expect(hello.pulse.positions).to.equal({ '/h': { epoch: 'e', offset: 5 } });
                }

                expect(c.subscriptions()).to.equal(['/h', '/other']);
                expect(c.overrideReconnectionAuth('x')).to.be.true();
            });

            it('rejects connect() on a transient hello error and keeps trying in the background', async () => {

                let hellos = 0;

                const server = await raw((ws, message) => {
                    if (++hellos === 1) {
                        ws.send(JSON.stringify({ type: 'hello', id: message.id, statusCode: 503, payload: { error: 'Service Unavailable', message: 'Busy' } }));
                        return;
                    }

                    ws.send(JSON.stringify({ type: 'hello', id: message.id, socket: 's' }));
                }, { skip: true });

                const c = client(server.url);
                await c.subscribe('/a', () => { });
                let connected = false;
                c.onConnect = () => (connected = true);
                const err = await expect(c.connect({ delay: 5 })).to.reject(PulseError, 'Busy');
                expect(err.statusCode).to.equal(503);
                await until(() => connected);
                expect(hellos).to.equal(2);
                expect(c.subscriptions()).to.equal(['/a']);
            });

            it('stops reconnecting when a later hello fails', async () => {

                let hellos = 0;

                const server = await raw((ws, message) => {
                    if (++hellos === 1) {
                        ws.send(JSON.stringify({ type: 'hello', id: message.id, socket: 's' }));
                        setTimeout(() => ws.close(), 10);
                        return;
                    }

                    ws.send(JSON.stringify({ type: 'hello', id: message.id, statusCode: 401, payload: { error: 'Unauthorized', message: 'Expired' } }));
                }, { skip: true });

                const c = client(server.url);
                const errors: PulseError[] = [];
                c.onError = (err) => errors.push(err);
                await c.connect({ delay: 5 });
                await until(() => errors.length === 1);
                expect(errors[0].message).to.equal('Expired');
                expect(c.overrideReconnectionAuth('x')).to.be.false();
                await wait(30);
                expect(hellos).to.equal(2);
            });
        });
    });
}


// ---- Helpers needing servers ----

function harnessSockets(server: Hapi.Server): any[] {

    const sockets: any[] = [];
    (server as any).eachSocket((socket: any) => sockets.push(socket));
    return sockets;
}

async function closedPort(): Promise<number> {

    const server = Net.createServer();
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const port = (server.address() as Net.AddressInfo).port;
    await new Promise((resolve) => server.close(resolve));
    return port;
}

// An HTTP server that refuses every WebSocket upgrade, recording when each attempt arrived
async function refusingServer() {

    const attempts: { at: number }[] = [];
    const server = Http.createServer();
    server.on('upgrade', (_req, socket: Net.Socket) => {

        attempts.push({ at: Date.now() });
        socket.destroy();
    });

    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    defer(() => new Promise((resolve) => server.close(resolve)));
    return { url: `ws://127.0.0.1:${(server.address() as Net.AddressInfo).port}`, attempts };
}

async function reconnectAttempts(options: Parameters<Client['connect']>[0], count: number, timeout = 3000): Promise<number[]> {

    const server = await refusingServer();
    const c = client(server.url);
    await expect(c.connect(options)).to.reject();
    await until(() => server.attempts.length >= count, timeout);
    await c.disconnect();
    return server.attempts.map((attempt) => attempt.at);
}
