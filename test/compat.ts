// Compatibility with @hapi/nes 14, walked from its API documentation: every scenario runs against the stock nes
// plugin and client and against hapi-pulse, and the observable results must be the same. Where hapi-pulse differs
// on purpose (README, "Differences from @hapi/nes"), the test shows both results.

import Assert from 'node:assert';
import { once } from 'node:events';
import * as Net from 'node:net';

import * as Basic from '@hapi/basic';
import * as Boom from '@hapi/boom';
import * as Code from '@hapi/code';
import * as Hapi from '@hapi/hapi';
import * as Lab from '@hapi/lab';
import { WebSocketServer } from 'ws';

import * as Pulse from '../lib/index';
import { Nes, Peer, until } from './helpers';

const { expect } = Code;
const lab = Lab.script();
export { lab };
const { afterEach, describe, it } = lab;

type Flavour = 'nes' | 'pulse';
const flavours: Flavour[] = ['nes', 'pulse'];

const cleanups: (() => unknown)[] = [];
afterEach(async () => {

    while (cleanups.length) {
        await cleanups.pop()!();
    }
});

const plugin = (flavour: Flavour) => (flavour === 'nes' ? Nes : Pulse);

// Runs `scenario` once per flavour; resolves with { nes, pulse } observations.
const both = async <T>(scenario: (flavour: Flavour) => Promise<T>): Promise<{ nes: T; pulse: T }> => {

    return { nes: await scenario('nes'), pulse: await scenario('pulse') };
};


describe('Compatibility with @hapi/nes: plugin', () => {

    it('satisfies plugins that declare a dependency on @hapi/nes, with or without a version range', async () => {

        const { nes, pulse } = await both(async (flavour) => {

            const server = Hapi.server();
            cleanups.push(() => server.stop());
            const dependant = (name: string, dependencies: string | Record<string, string>) => ({
                name,
                dependencies,
                register: (srv: Hapi.Server) => srv.dependency('@hapi/nes', async () => srv.subscription('/' + name))
            });

            await server.register(dependant('a', '@hapi/nes'));                 // dependencies are checked at initialize()
            await server.register(plugin(flavour));
            await server.register(dependant('b', { '@hapi/nes': '14.x' }));
            await server.initialize();
            return Object.keys(server.registrations).filter((name) => name !== 'hapi-pulse').sort();
        });

        expect(nes).to.equal(['@hapi/nes', 'a', 'b']);
        expect(pulse).to.equal(nes);
    });

    it('refuses to register beside @hapi/nes', async () => {

        const server = Hapi.server();
        await server.register(Nes);
        await expect(server.register(Pulse)).to.reject();
    });

    it('iterates sockets with eachSocket(), and throws at once for a user filter without a subscription path', async () => {

        const { nes, pulse } = await both(async (flavour) => {

            const server = await start(flavour);
            const john = connectTo(server, 'nes');
            await john.connect({ auth: basic('john') });
            const anonymous = connectTo(server, 'nes');
            await anonymous.connect();
            await anonymous.subscribe('/item/1', () => { });

            const users = async (options?: Record<string, string>) => {

                const seen: unknown[] = [];
                await server.eachSocket((socket) => seen.push(socket.auth.credentials?.user ?? null), options);
                return seen.sort();
            };

            let thrown: unknown;
            try {
                void server.eachSocket(() => { }, { user: 'john' });
            }
            catch (err) {
                thrown = (err as Error).message;
            }

            return { all: await users(), subscribed: await users({ subscription: '/item/1' }), none: await users({ subscription: '/item/2' }), thrown };
        });

        expect(nes).to.equal({ all: ['john', null], subscribed: [null], none: [], thrown: 'Cannot specify user filter without a subscription path' });
        expect(pulse).to.equal(nes);
    });

    it('refuses any message but hello before the hello with Connection is not initialized, whatever else is wrong with it', async () => {

        const { nes, pulse } = await both(async (flavour) => {

            const server = await start(flavour);
            const peer = await Peer.open(`ws://127.0.0.1:${server.info.port}`);
            cleanups.push(() => peer.close());
            const messages = [
                { type: 'request', id: 1 },
                { type: 'request', id: 2, method: 'GET', path: '/' },
                { type: 'sub', id: 3, path: 'not-a-path' },
                { type: 'unsub', id: 4 },
                { type: 'message', id: 5 },
                { type: 'reauth', id: 6 },
                { type: 'unknown', id: 7 },
                { type: 'request', path: '/' },
                { id: 8 },
                'not json'
            ];

            for (const message of messages) {
                peer.send(message);
            }

            await peer.count(messages.length);
            return [...peer.frames].sort();                 // nes answers some of them out of order
        });

        expect(nes.filter((frame) => frame.includes('Connection is not initialized'))).to.have.length(7);
        expect(pulse).to.equal(nes);
    });

    it('answers a request sent while the hello is processed with Connection is not initialized', async () => {

        const { nes, pulse } = await both(async (flavour) => {

            const server = await start(flavour);
            const peer = await Peer.open(`ws://127.0.0.1:${server.info.port}`);
            cleanups.push(() => peer.close());
            peer.send({ type: 'hello', id: 1, version: '2', auth: basic('john') });
            peer.send({ type: 'request', id: 2, method: 'GET', path: '/me' });
            await peer.count(2);
            return peer.frames.map((frame) => JSON.parse(frame)).sort((a, b) => a.id - b.id).map((frame) => [frame.type, frame.statusCode ?? null, frame.payload?.message ?? null]);
        });

        expect(nes).to.equal([['hello', null, null], ['request', 400, 'Connection is not initialized']]);
        expect(pulse).to.equal(nes);
    });

    it('passes socket, credentials, params and internal to filters, and params to onSubscribe and onUnsubscribe', async () => {

        const { nes, pulse } = await both(async (flavour) => {

            const calls: unknown[] = [];
            const server = await start(flavour);
            server.subscription('/room/{id}', {
                auth: { mode: 'optional', index: true },
                filter: (path, message, options) => {

                    calls.push(['filter', path, message, options.socket.auth.credentials, options.credentials, options.params, options.internal]);
                    return message === 'override' ? { override: 'changed' } : message !== 'skip';
                },
                onSubscribe: (socket, path, params) => {

                    calls.push(['onSubscribe', socket.auth.credentials, path, params]);
                },
                onUnsubscribe: (socket, path, params) => {

                    calls.push(['onUnsubscribe', socket.auth.credentials, path, params]);
                }
            });

            const client = connectTo(server, 'nes');
            await client.connect({ auth: basic('john') });
            const got: unknown[] = [];
            await client.subscribe('/room/a', (message: unknown) => got.push(message));
            await server.publish('/room/a', 'skip', { internal: 1 });
            await server.publish('/room/a', 'override');
            await server.publish('/room/a', 'plain', { user: 'john' });
            await server.publish('/room/a', 'other', { user: 'jane' });
            await until(() => got.length === 2);
            await client.unsubscribe('/room/a', null);
            await until(() => calls.length === 5);
            const unindexed = await server.publish('/item/1', 'x', { user: 'john' }).catch((err) => err.message);
            let broadcast: unknown;
            try {
                await server.broadcast('x', { user: 'john' });
                broadcast = 'sent';
            }
            catch (err) {
                broadcast = (err as Error).message;
            }

            return { calls, got, unindexed, broadcast };
        });

        expect(nes.got).to.equal(['changed', 'plain']);
        expect(nes.calls[1]).to.equal(['filter', '/room/a', 'skip', { user: 'john' }, { user: 'john' }, { id: 'a' }, 1]);
        expect(nes.unindexed).to.equal('Subscription auth indexing is disabled');
        expect(pulse).to.equal(nes);
    });

    it('gives sockets id, app, auth, info, server, isOpen, send, publish, revoke and disconnect, and request.socket', async () => {

        const { nes, pulse } = await both(async (flavour) => {

            const server = await start(flavour);
            server.route({ method: 'GET', path: '/socket', handler: (request) => ({ same: request.socket?.id === sockets[0].id, app: request.socket?.app }) });
            const sockets: any[] = [];
            const client = connectTo(server, 'nes');
            const trace = record(client);
            const got: unknown[] = [];
            await client.connect({ auth: basic('john') });
            await client.subscribe('/item/1', (message: unknown, flags: unknown) => got.push([message, flags]));
            await server.eachSocket((socket) => sockets.push(socket));
            const socket = sockets[0];
            socket.app.seen = true;
            const shape = {
                id: socket.id.startsWith(Date.now().toString().slice(0, 6)) && socket.id.includes(server.info.id),
                auth: { isAuthenticated: socket.auth.isAuthenticated, credentials: socket.auth.credentials, artifacts: socket.auth.artifacts },
                info: [typeof socket.info.remoteAddress, typeof socket.info.remotePort],
                server: socket.server.info.id === server.info.id,
                open: socket.isOpen()
            };

            const viaRequest = (await client.request('/socket')).payload;
            await socket.send('sent');
            await socket.publish('/item/1', 'published');
            await socket.revoke('/item/1', null);
            await socket.publish('/item/1', 'after revoke');
            await client.request('/');
            await socket.disconnect();
            await until(() => trace.length === 4);
            const closed = await socket.revoke('/item/1', 'x', { ignoreClose: true });
            return { shape, viaRequest, got, trace, open: socket.isOpen(), closed, subscriptions: client.subscriptions() };
        });

        expect(nes.shape).to.equal({ id: true, auth: { isAuthenticated: true, credentials: { user: 'john' }, artifacts: undefined }, info: ['string', 'number'], server: true, open: true });
        expect(nes.got).to.equal([['published', {}]]);
        expect(pulse).to.equal(nes);
    });
});

// Deliberate departures on the server side: both results shown.
describe('Compatibility with @hapi/nes: server differences', () => {

    it('rejects broadcast() and publish() of a message that cannot be serialised (nes logs it and resolves)', async () => {

        const { nes, pulse } = await both(async (flavour) => {

            const server = await start(flavour);
            const logs: string[][] = [];
            server.events.on('log', (event) => logs.push(event.tags));
            const client = connectTo(server, 'nes');
            const trace = record(client);
            await client.connect();
            await client.subscribe('/item/1', () => { });
            const cycle: Record<string, unknown> = {};
            cycle.self = cycle;
            const results = [
                await server.broadcast(cycle).then(() => 'resolved', (err) => err.constructor.name),
                await server.publish('/item/1', cycle).then(() => 'resolved', (err) => err.constructor.name),
                await server.publish('/item/1', 10n).then(() => 'resolved', (err) => err.constructor.name)
            ];

            await client.request('/');
            return { results, logs, trace };
        });

        expect(nes).to.equal({ results: ['resolved', 'resolved', 'resolved'], logs: new Array(3).fill(['nes', 'serialization', 'error']), trace: [['onConnect']] });
        expect(pulse).to.equal({ results: ['TypeError', 'TypeError', 'TypeError'], logs: [], trace: [['onConnect']] });
    });

    it('rejects publish() when a filter throws a programmer error, logging the path, and still delivers to the other sockets', async () => {

        let pulseLogs: unknown;
        const { nes, pulse } = await both(async (flavour) => {

            const server = await start(flavour);
            const logs: unknown[] = [];
            server.events.on('log', (event) => {

                logs.push([event.tags, (event.data as any).path, (event.data as any).error.message]);
                pulseLogs = [event.tags, (event.data as any).path];
            });
            server.subscription('/filtered/{id}', {
                filter: (_path, message, { credentials }) => {

                    if (message === 'bug' && credentials?.user === 'john') {
                        return (undefined as any).property;
                    }

                    if (message === 'refused' && credentials?.user === 'john') {
                        throw Boom.forbidden('not for john');
                    }

                    if (message === 'bugs') {
                        throw credentials?.user === 'john' ? new RangeError('first') : new TypeError('second');
                    }

                    Assert(message !== 'assert' || credentials?.user !== 'jane', 'not for jane');

                    return true;
                }
            });

            const got: unknown[] = [];
            for (const user of ['john', 'jane']) {
                const client = connectTo(server, 'nes');
                await client.connect({ auth: basic(user) });
                await client.subscribe('/filtered/1', (message: unknown) => got.push([user, message]));
            }

            const bug = await server.publish('/filtered/1', 'bug').then(() => 'resolved', (err) => err.constructor.name);
            const refused = await server.publish('/filtered/1', 'refused').then(() => 'resolved', (err) => err.message);
            const bugs = await server.publish('/filtered/1', 'bugs').then(() => 'resolved', (err) => err.message);
            const assertion = await server.publish('/filtered/1', 'assert').then(() => 'resolved', (err) => err.code);
            await server.publish('/filtered/1', 'end');
            await until(() => got.filter((entry: any) => entry[1] === 'end').length === 2);
            return { bug, refused, bugs, assertion, got: got.sort(), logs: logs.map((entry: any) => entry[2]) };
        });

        // nes stops at the socket whose filter threw: who else receives depends on subscription order
        expect([nes.bug, nes.refused, nes.bugs, nes.assertion, nes.logs]).to.equal(['TypeError', 'resolved', 'first', 'ERR_ASSERTION', []]);
        expect(nes.got).to.equal([['jane', 'end'], ['jane', 'refused'], ['john', 'assert'], ['john', 'end']]);      // jane, after john, never got 'bug'
        expect(pulse).to.equal({
            bug: 'TypeError',
            refused: 'resolved',
            bugs: 'first',
            assertion: 'ERR_ASSERTION',
            got: [['jane', 'bug'], ['jane', 'end'], ['jane', 'refused'], ['john', 'assert'], ['john', 'end']],
            logs: ["Cannot read properties of undefined (reading 'property')", 'not for john', 'first', 'second', 'not for jane']
        });
        expect(pulseLogs).to.equal([['pulse', 'filter', 'error'], '/filtered/1']);
    });
});


// ---- Client API: the stock nes client on a nes server is the reference for every other pairing ----

interface Pairing {
    server: Flavour;
    client: Flavour;
}

const pairings: Pairing[] = [
    { server: 'nes', client: 'nes' },
    { server: 'nes', client: 'pulse' },
    { server: 'pulse', client: 'pulse' },
    { server: 'pulse', client: 'nes' }
];

const Clients = { nes: Nes.Client, pulse: Pulse.Client } as Record<Flavour, new (url: string, options?: any) => any>;

// Runs `scenario` for every pairing and expects each result to equal the reference's; resolves with it.
const compare = async <T>(scenario: (pairing: Pairing) => Promise<T>): Promise<T> => {

    const results: { pairing: Pairing; result: T }[] = [];
    for (const pairing of pairings) {
        results.push({ pairing, result: await scenario(pairing) });
    }

    const reference = results[0]!.result;
    for (const { pairing, result } of results.slice(1)) {
        expect({ ...pairing, result } as unknown).to.equal({ ...pairing, result: reference });
    }

    return reference;
};

const basic = (user: string, password = 'secret') => ({ headers: { authorization: 'Basic ' + Buffer.from(`${user}:${password}`).toString('base64') } });

// A server with the routes and subscriptions the scenarios use.
const start = async (flavour: Flavour, options: Record<string, unknown> = {}, port = 0): Promise<Hapi.Server> => {

    const server = Hapi.server({ host: '127.0.0.1', port });
    await server.register(Basic);
    server.auth.strategy('basic', 'basic', { validate: (_request: unknown, user: string, password: string) => ({ isValid: password === 'secret', credentials: { user } }) });
    await server.register({
        plugin: plugin(flavour),
        options: {
            auth: { type: 'direct', route: { strategy: 'basic', mode: 'optional' }, index: true },
            onMessage: (_socket: unknown, message: any) => {

                if (message === 'fail') {
                    throw Boom.badData('Not that', { why: 'because' });
                }

                return { echo: message };
            },
            ...options
        }
    } as any);

    server.route([
        { method: 'GET', path: '/', handler: () => 'root' },
        { method: 'POST', path: '/echo', handler: (request) => ({ payload: request.payload, header: request.headers['x-a'], socket: request.socket !== null }) },
        { method: 'GET', path: '/me', options: { auth: 'basic', handler: (request) => request.auth.credentials } },
        { method: 'GET', path: '/boom', handler: () => Boom.conflict('Taken', { id: 1 }) },
        { method: 'GET', path: '/crash', handler: () => { throw new Error('private detail'); } },
        { method: 'GET', path: '/slow', handler: () => new Promise((resolve) => setTimeout(() => resolve('late'), 200)) }
    ]);

    server.subscription('/item/{id}');
    server.subscription('/private', { auth: { mode: 'required' } });
    await server.start();
    cleanups.push(() => server.stop({ timeout: 50 }));
    return server;
};

const connectTo = (server: Hapi.Server, client: Flavour, options?: Record<string, unknown>) => {

    const instance = new Clients[client](`ws://127.0.0.1:${server.info.port}`, options);
    instance.onError = () => { };
    cleanups.push(() => instance.disconnect());
    return instance;
};

// What an application can observe of a client error
const described = (err: any) => ({ message: err.message, type: err.type, isNes: err.isNes, statusCode: err.statusCode, data: err.data, path: err.path, headers: err.headers });

const outcome = (promise: Promise<unknown>): Promise<unknown> => promise.then((value) => ({ value }), (err) => ({ error: described(err) }));

// Every handler of a client, in order of calls
const record = (client: any): unknown[] => {

    const trace: unknown[] = [];
    client.onError = (err: unknown) => trace.push(['onError', described(err)]);
    client.onConnect = () => trace.push(['onConnect']);
    client.onDisconnect = (willReconnect: boolean, log: unknown) => trace.push(['onDisconnect', willReconnect, log]);
    client.onUpdate = (message: unknown) => trace.push(['onUpdate', message]);
    return trace;
};

const freePort = async (): Promise<number> => {

    const probe = Net.createServer().listen(0, '127.0.0.1');
    await once(probe, 'listening');
    const port = (probe.address() as Net.AddressInfo).port;
    await new Promise((resolve) => probe.close(resolve));
    return port;
};

describe('Compatibility with @hapi/nes: client', () => {

    it('connects, sets id, calls onConnect and tunnels requests (path, route, method, headers, payload)', async () => {

        const result = await compare(async ({ server: flavour, client: kind }) => {

            const server = await start(flavour, { headers: ['content-type'] });
            const client = connectTo(server, kind);
            const trace = record(client);
            const before = client.id;
            await client.connect({ auth: basic('john') });
            const response = (res: any) => ({ payload: res.payload, statusCode: res.statusCode, headers: res.headers });
            return {
                before,
                id: typeof client.id,
                trace,
                root: response(await client.request('/')),
                echo: response(await client.request({ method: 'POST', path: '/echo', headers: { 'x-a': 'b' }, payload: { a: [1] } })),
                me: response(await client.request('/me')),
                auth: await outcome(client.request({ path: '/', headers: { Authorization: 'x' } }))
            };
        });

        expect(result.root).to.equal({ payload: 'root', statusCode: 200, headers: { 'content-type': 'text/html; charset=utf-8' } });
        expect(result.echo.payload).to.equal({ payload: { a: [1] }, header: 'b', socket: true });
        expect(result.trace).to.equal([['onConnect']]);
    });

    it('rejects server errors with message, type, isNes, statusCode, data and headers', async () => {

        const result = await compare(async ({ server: flavour, client: kind }) => {

            const server = await start(flavour, { headers: ['content-type', 'www-authenticate'] });
            const client = connectTo(server, kind);
            await client.connect();
            return {
                missing: await outcome(client.request('/missing')),
                boom: await outcome(client.request('/boom')),
                crash: await outcome(client.request('/crash')),
                unauthorized: await outcome(client.request('/me')),
                message: await outcome(client.message('fail')),
                sub: await outcome(client.subscribe('/unknown', () => { })),
                subAuth: await outcome(client.subscribe('/private', () => { }))
            };
        });

        expect(result.missing).to.equal({ error: { message: 'Not Found', type: 'server', isNes: true, statusCode: 404, data: { statusCode: 404, error: 'Not Found', message: 'Not Found' }, path: undefined, headers: { 'content-type': 'application/json; charset=utf-8' } } });
        expect((result.unauthorized as any).error.headers['www-authenticate']).to.equal('Basic');
        expect((result.crash as any).error.message).to.equal('An internal server error occurred');
    });

    it('sends messages and receives updates from broadcast() and socket.send()', async () => {

        const result = await compare(async ({ server: flavour, client: kind }) => {

            const server = await start(flavour);
            const client = connectTo(server, kind);
            const trace = record(client);
            await client.connect();
            const reply = await client.message({ a: 1 });
            await server.broadcast({ b: 2 });
            await server.eachSocket((socket) => socket.send('direct'));
            await until(() => trace.length === 3);
            return { reply, trace };
        });

        expect(result).to.equal({ reply: { payload: { echo: { a: 1 } } }, trace: [['onConnect'], ['onUpdate', { b: 2 }], ['onUpdate', 'direct']] });
    });

    it('subscribes, receives publications with flags, unsubscribes per handler and is revoked', async () => {

        const result = await compare(async ({ server: flavour, client: kind }) => {

            const server = await start(flavour);
            const client = connectTo(server, kind);
            const got: unknown[] = [];
            const first = (message: unknown, flags: unknown) => got.push(['first', message, flags]);
            const second = (message: unknown, flags: unknown) => got.push(['second', message, flags]);
            await client.subscribe('/item/1', first);                              // before connecting: sent in the hello
            await client.connect();
            await client.subscribe('/item/1', second);
            await client.subscribe('/item/2', first);
            const subscribed = client.subscriptions();
            await server.publish('/item/1', { n: 1 });
            await until(() => got.length === 2);
            await client.unsubscribe('/item/1', first);
            await server.publish('/item/1', { n: 2 });
            await until(() => got.length === 3);
            await client.unsubscribe('/item/1', null);
            await server.eachSocket((socket) => socket.revoke('/item/2', 'gone'));
            await until(() => got.length === 4);
            await server.publish('/item/1', { n: 3 });
            const last = await client.request('/');                                // nothing more arrived meanwhile
            return { subscribed, got, after: client.subscriptions(), last: last.payload };
        });

        expect(result.got).to.equal([
            ['first', { n: 1 }, {}], ['second', { n: 1 }, {}],
            ['second', { n: 2 }, {}],
            ['first', 'gone', { revoked: true }]
        ]);
        expect(result.after).to.equal([]);
    });

    it('reports misuse as user errors: invalid paths, sends while disconnected, connect twice, unserialisable data', async () => {

        const result = await compare(async ({ server: flavour, client: kind }) => {

            const server = await start(flavour);
            const client = connectTo(server, kind);
            const early = await outcome(client.request('/'));
            const invalid = [await outcome(client.subscribe('item', () => { })), await outcome(client.unsubscribe('', null))];
            await client.connect();
            const again = await outcome(client.connect());
            await client.disconnect();
            await client.connect({ reconnect: false });
            const twice = await outcome(client.connect());
            const cycle: Record<string, unknown> = {};
            cycle.self = cycle;
            const unserialisable = await outcome(client.request({ path: '/echo', method: 'POST', payload: cycle }));
            const afterwards = (await client.request('/')).payload;
            await client.disconnect();
            return { early, invalid, again, twice, unserialisable, afterwards, late: await outcome(client.message('x')) };
        });

        expect(result.again).to.equal({ error: { message: 'Cannot connect while client attempts to reconnect', type: 'user', isNes: true, statusCode: undefined, data: undefined, path: undefined, headers: undefined } });
        expect((result.twice as any).error.message).to.equal('Already connected');
        expect((result.early as any).error).to.include({ message: 'Failed to send message - server disconnected', type: 'disconnect' });
        expect((result.unserialisable as any).error.type).to.equal('user');
    });

    it('times out requests, and rejects the requests pending when the connection ends', async () => {

        const result = await compare(async ({ server: flavour, client: kind }) => {

            const server = await start(flavour);
            const client = connectTo(server, kind, { timeout: 50 });
            await client.connect();
            const timedOut = await outcome(client.request('/slow'));
            const pending = outcome(client.request('/slow'));
            await client.disconnect();
            return { timedOut, pending: await pending };
        });

        expect((result.timedOut as any).error).to.include({ message: 'Request timed out', type: 'timeout' });
        expect((result.pending as any).error).to.include({ message: 'Request failed - server disconnected', type: 'disconnect' });
    });

    it('fails a hello with bad credentials or a refused subscription, and stops reconnecting', async () => {

        // The close differs on purpose: hapi-pulse closes a socket whose hello failed (1008), nes leaves it to the client
        const closes: Record<string, unknown> = {};
        const result = await compare(async ({ server: flavour, client: kind }) => {

            const server = await start(flavour);
            const client = connectTo(server, kind);
            const trace = record(client);
            const credentials = await outcome(client.connect({ auth: basic('john', 'wrong') }));
            const override = client.overrideReconnectionAuth(basic('john'));
            await until(() => trace.length === 1);                 // the close may come after the rejection
            closes[`${flavour} ${kind}`] = trace.map((entry: any) => [entry[2].code, entry[2].reason]);
            for (const entry of trace as any[]) {
                const { code: _code, explanation: _explanation, reason: _reason, ...rest } = entry[2];
                entry[2] = rest;
            }

            const subscriber = connectTo(server, kind);
            await subscriber.subscribe('/private', () => { });
            const refused = await outcome(subscriber.connect());
            return { credentials, override, trace, refused, subscriptions: subscriber.subscriptions() };
        });

        expect((result.credentials as any).error).to.include({ message: 'Bad username or password', type: 'server', statusCode: 401 });
        expect(result.override).to.be.false();
        expect((result.refused as any).error).to.include({ message: 'Authentication required to subscribe', statusCode: 401, path: '/private' });
        expect(result.subscriptions).to.equal([]);
        expect(result.trace).to.equal([['onDisconnect', false, { wasClean: true, willReconnect: false, wasRequested: false }]]);
        expect(closes).to.equal({ 'nes nes': [[1005, '']], 'nes pulse': [[1005, '']], 'pulse pulse': [[1008, 'Hello failed']], 'pulse nes': [[1008, 'Hello failed']] });
    });

    it('reauthenticates and overrides the reconnection credentials', async () => {

        const result = await compare(async ({ server: flavour, client: kind }) => {

            const server = await start(flavour);
            const client = connectTo(server, kind);
            await client.connect({ auth: basic('john'), delay: 10 });
            const reauth = await client.reauthenticate(basic('jane'));
            const me = (await client.request('/me')).payload;
            const overridden = client.overrideReconnectionAuth(basic('jack'));
            const reconnected = new Promise((resolve) => (client.onConnect = resolve));
            await server.eachSocket((socket) => socket.disconnect());
            await reconnected;
            return { reauth, me, overridden, after: (await client.request('/me')).payload };
        });

        expect(result).to.equal({ reauth: true, me: { user: 'jane' }, overridden: true, after: { user: 'jack' } });
    });

    it('reports a dropped connection with willReconnect and the close log, then reconnects and resubscribes', async () => {

        const result = await compare(async ({ server: flavour, client: kind }) => {

            const server = await start(flavour);
            const client = connectTo(server, kind);
            const got: unknown[] = [];
            await client.connect({ delay: 10 });
            await client.subscribe('/item/1', (message: unknown) => got.push(message));
            const trace = record(client);
            await server.eachSocket((socket) => socket.disconnect());
            await until(() => trace.length === 2);
            await server.publish('/item/1', 'again');
            await until(() => got.length === 1);
            await client.disconnect();
            return { trace, got };
        });

        expect(result.trace).to.equal([
            ['onDisconnect', true, { code: 1005, explanation: 'No status received', reason: '', wasClean: true, willReconnect: true, wasRequested: false }],
            ['onConnect'],
            ['onDisconnect', false, { code: 1005, explanation: 'No status received', reason: '', wasClean: true, willReconnect: false, wasRequested: true }]
        ]);
    });

    it('reports a requested disconnect with wasRequested and no reconnection', async () => {

        const result = await compare(async ({ server: flavour, client: kind }) => {

            const server = await start(flavour);
            const client = connectTo(server, kind);
            await client.connect();
            const trace = record(client);
            await client.disconnect();
            await client.disconnect();
            return trace;
        });

        expect(result).to.equal([['onDisconnect', false, { code: 1005, explanation: 'No status received', reason: '', wasClean: true, willReconnect: false, wasRequested: true }]]);
    });

    it('reports a heartbeat timeout through onError and onHeartbeatTimeout, then disconnects', async () => {

        // A server that announces a heartbeat and then stays silent
        const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
        await once(wss, 'listening');
        cleanups.push(() => new Promise((resolve) => wss.close(resolve)));
        wss.on('connection', (ws) => ws.on('message', (data) => {

            const hello = JSON.parse(data.toString());
            ws.send(JSON.stringify({ type: 'hello', id: hello.id, socket: 's', heartbeat: { interval: 30, timeout: 20 } }));
        }));

        // The close differs on purpose: hapi-pulse drops the socket at once (4001), nes waits for the closing handshake
        const closes: Record<string, unknown> = {};
        const result = await compare(async ({ server, client: kind }) => {

            const client = new Clients[kind](`ws://127.0.0.1:${(wss.address() as Net.AddressInfo).port}`);
            const trace = record(client);
            client.onHeartbeatTimeout = (willReconnect: boolean) => trace.push(['onHeartbeatTimeout', willReconnect]);
            await client.connect({ reconnect: false });
            await until(() => trace.length === 4);
            const [name, willReconnect, { code, reason, explanation, wasClean, ...rest }] = trace[3] as any;
            closes[`${server} ${kind}`] = [code, reason, explanation, wasClean];
            return [...trace.slice(0, 3), [name, willReconnect, rest]];
        });

        expect(result).to.equal([
            ['onConnect'],
            ['onError', { message: 'Disconnecting due to heartbeat timeout', type: 'timeout', isNes: true, statusCode: undefined, data: undefined, path: undefined, headers: undefined }],
            ['onHeartbeatTimeout', false],
            ['onDisconnect', false, { willReconnect: false, wasRequested: false }]
        ]);
        const nes = [1005, '', 'No status received', true];
        const pulse = [4001, 'Heartbeat timeout', 'Unknown', false];
        expect(closes).to.equal({ 'nes nes': nes, 'nes pulse': pulse, 'pulse pulse': pulse, 'pulse nes': nes });
    });

    it('rejects connect() with Socket error when disconnect() is called while the socket opens', async () => {

        const result = await compare(async ({ server: flavour, client: kind }) => {

            const server = await start(flavour);
            const client = connectTo(server, kind);
            const trace = record(client);
            const connecting = outcome(client.connect());
            await client.disconnect();
            return { connecting: await connecting, trace, id: client.id };
        });

        expect(result).to.equal({ connecting: { error: { message: 'Socket error', type: 'ws', isNes: true, statusCode: undefined, data: undefined, path: undefined, headers: undefined } }, trace: [], id: null });
    });

    describe('when the server cannot be reached', () => {

        // nes passes the error event's fields to onDisconnect for an attempt that never opened (no code); hapi-pulse
        // reports it as the abnormal closure it is (README, "Differences from @hapi/nes"). The rest must match.
        const attempt = (entry: any) => {

            if (entry[0] !== 'onDisconnect') {
                return entry;
            }

            const [name, willReconnect, { code, explanation, reason, wasClean, ...rest }] = entry;
            expect({ code, explanation, reason, wasClean }).to.equal(entry[2].code === undefined ?
                { code: undefined, explanation: 'Unknown', reason: undefined, wasClean: undefined } :
                { code: 1006, explanation: 'Abnormal closure', reason: '', wasClean: false });
            return [name, willReconnect, rest];
        };

        it('rejects with Socket error and no onDisconnect when reconnect is off', async () => {

            const result = await compare(async ({ client: kind }) => {

                const client = new Clients[kind](`ws://127.0.0.1:${await freePort()}`);
                const trace = record(client);
                const connecting = await outcome(client.connect({ reconnect: false }));
                return { connecting, trace };
            });

            expect(result).to.equal({ connecting: { error: { message: 'Socket error', type: 'ws', isNes: true, statusCode: undefined, data: undefined, path: undefined, headers: undefined } }, trace: [] });
        });

        it('keeps trying in the background after connect() rejects, through onError, until retries run out', async () => {

            // willReconnect differs on purpose: nes says false while its last retry is already scheduled
            const willReconnect: Record<string, boolean[]> = {};
            const result = await compare(async ({ server, client: kind }) => {

                const client = new Clients[kind](`ws://127.0.0.1:${await freePort()}`);
                const trace = record(client);
                const connecting = await outcome(client.connect({ delay: 5, maxDelay: 5, retries: 2 }));
                await until(() => trace.some((entry: any) => entry[0] === 'onError' && entry[1].message === 'Socket error'));
                await new Promise((resolve) => setTimeout(resolve, 30));                       // nothing follows
                const disconnects = trace.map(attempt).filter((entry: any) => entry[0] === 'onDisconnect');
                willReconnect[`${server} ${kind}`] = disconnects.map((entry: any) => entry[1]);
                return { connecting, trace: trace.map(attempt).map((entry: any) => (entry[0] === 'onDisconnect' ? [entry[0], entry[2].wasRequested] : entry)) };
            });

            const error = (message: string) => ['onError', { message, type: 'ws', isNes: true, statusCode: undefined, data: undefined, path: undefined, headers: undefined }];
            expect((result.connecting as any).error.message).to.equal('Connection terminated while waiting to connect');
            expect(result.trace).to.equal([['onDisconnect', false], error('Connection terminated while waiting to connect'), ['onDisconnect', false], error('Socket error')]);
            expect(willReconnect).to.equal({ 'nes nes': [true, false], 'nes pulse': [true, true], 'pulse pulse': [true, true], 'pulse nes': [true, false] });
        });

        it('connects when the server comes up, calling onConnect, with the subscriptions made meanwhile', async () => {

            const result = await compare(async ({ server: flavour, client: kind }) => {

                const port = await freePort();
                const client = new Clients[kind](`ws://127.0.0.1:${port}`);
                cleanups.push(() => client.disconnect());
                const trace = record(client);
                const connecting = await outcome(client.connect({ delay: 20, maxDelay: 20 }));
                await until(() => trace.filter((entry: any) => entry[0] === 'onError').length === 2);
                const got: unknown[] = [];
                await client.subscribe('/item/1', (message: unknown) => got.push(message));
                const server = await start(flavour, {}, port);
                await until(() => trace.some((entry: any) => entry[0] === 'onConnect'));
                await server.publish('/item/1', 'up');
                await until(() => got.length === 1);

                // The number of failed attempts depends on timing: compare each kind of event, in order of first appearance
                const seen = [...new Set(trace.map(attempt).map((entry) => JSON.stringify(entry)))].map((entry) => JSON.parse(entry));
                return { connecting, seen, got, id: typeof client.id };
            });

            expect(result.seen).to.equal([
                ['onDisconnect', true, { willReconnect: true, wasRequested: false }],
                ['onError', { message: 'Connection terminated while waiting to connect', type: 'ws', isNes: true }],
                ['onConnect']
            ]);
            expect(result.id).to.equal('string');
        });

        it('rejects connect() when the server drops the socket during the hello, and reconnects (nes stops)', async () => {

            let hellos = 0;
            const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
            await once(wss, 'listening');
            cleanups.push(() => new Promise((resolve) => wss.close(resolve)));
            wss.on('connection', (ws) => ws.on('message', (data) => {

                const hello = JSON.parse(data.toString());
                if (++hellos % 2) {
                    return ws.terminate();                              // every other hello is answered
                }

                ws.send(JSON.stringify({ type: 'hello', id: hello.id, socket: 'x', heartbeat: false }));
            }));

            const connected: Record<string, unknown> = {};
            const result = await compare(async ({ server, client: kind }) => {

                hellos = 0;
                const client = new Clients[kind](`ws://127.0.0.1:${(wss.address() as Net.AddressInfo).port}`);
                cleanups.push(() => client.disconnect());
                const trace = record(client);
                const connecting = await outcome(client.connect({ delay: 10 }));
                await new Promise((resolve) => setTimeout(resolve, 100));
                connected[`${server} ${kind}`] = client.id;
                await client.disconnect();
                return { connecting, trace: trace.filter((entry: any) => entry[0] === 'onError') };
            });

            expect((result.connecting as any).error).to.include({ message: 'Request failed - server disconnected', type: 'disconnect' });
            expect(result.trace).to.equal([]);
            expect(connected).to.equal({ 'nes nes': null, 'nes pulse': 'x', 'pulse pulse': 'x', 'pulse nes': null });
        });

        it('times out opening a socket that never completes the handshake', async () => {

            const tcp = Net.createServer((socket) => cleanups.push(() => socket.destroy())).listen(0, '127.0.0.1');
            await once(tcp, 'listening');
            cleanups.push(() => new Promise((resolve) => tcp.close(resolve)));
            const result = await compare(async ({ client: kind }) => {

                const client = new Clients[kind](`ws://127.0.0.1:${(tcp.address() as Net.AddressInfo).port}`);
                const trace = record(client);
                const connecting = await outcome(client.connect({ timeout: 50, reconnect: false }));
                return { connecting, trace };
            });

            expect((result.connecting as any).error).to.include({ message: 'Connection timed out', type: 'timeout' });
        });
    });
});
