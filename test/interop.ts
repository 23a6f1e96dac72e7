// The stock @hapi/nes 14 client against a hapi-pulse server: every feature an nes application uses.

import * as Basic from '@hapi/basic';
import * as Boom from '@hapi/boom';
import * as Code from '@hapi/code';
import type * as Hapi from '@hapi/hapi';
import * as Lab from '@hapi/lab';

import { Nes, server, url, until, wait } from './helpers';

const { expect } = Code;
const lab = Lab.script();
export { lab };
const { describe, it } = lab;

const users: Record<string, { password: string; scope: string[] }> = {
    john: { password: 'secret', scope: ['a', 'user-john'] },
    jane: { password: 'secret', scope: ['b', 'user-jane'] }
};

const basic = async (srv: Hapi.Server): Promise<void> => {

    await srv.register(Basic);
    srv.auth.strategy('default', 'basic', {
        validate: (_request: unknown, username: string, password: string) => {

            const user = users[username];
            if (!user || user.password !== password) {
                return { isValid: false, credentials: null };
            }

            return { isValid: true, credentials: { user: username, scope: user.scope } };
        }
    });
    srv.auth.default('default');
};

const header = (username: string, password = 'secret'): string => 'Basic ' + Buffer.from(`${username}:${password}`).toString('base64');

const password = 'a-password-that-is-at-least-32-characters-long!';

describe('@hapi/nes client against hapi-pulse', () => {

    it('connects, requests and subscribes without auth', async () => {

        const srv = await server({ headers: ['content-type'] });
        srv.route([
            { method: 'GET', path: '/', handler: () => 'hello' },
            { method: 'POST', path: '/echo', handler: (request) => request.payload },
            { method: 'GET', path: '/json', options: { id: 'json', handler: (_request, h) => h.response('{"raw":true}').type('application/json') } },
            { method: 'GET', path: '/socket', handler: (request) => ({ has: request.socket !== null }) },
            { method: '*', path: '/any', options: { id: 'any', handler: () => 'any' } }
        ]);
        srv.subscription('/item/{id}');
        await srv.start();

        const client = new Nes.Client(url(srv));
        await client.connect();
        expect(client.id).to.be.a.string();

        const hello = await client.request('/');
        expect(hello.payload).to.equal('hello');
        expect(hello.statusCode).to.equal(200);
        expect(hello.headers).to.equal({ 'content-type': 'text/html; charset=utf-8' });

        const echo = await client.request({ method: 'POST', path: '/echo', payload: { a: [1, 2] } });
        expect(echo.payload).to.equal({ a: [1, 2] });

        const raw = await client.request('json');                    // by route id, JSON text passes through
        expect(raw.payload).to.equal({ raw: true });

        expect((await client.request('/socket')).payload).to.equal({ has: true });

        await expect(client.request('/missing')).to.reject('Not Found');
        const err: any = await expect(client.request('any')).to.reject('Cannot use route id with wildcard method route config');
        expect(err.statusCode).to.equal(400);
        await expect(client.request('unknown-id')).to.reject('Not Found');
        await expect(client.request({ path: '/', headers: { authorization: 'x' } })).to.reject('Cannot include an Authorization header');

        const received: unknown[] = [];
        await client.subscribe('/item/5', (message: unknown) => received.push(message));
        await client.subscribe('/item/6', () => received.push('wrong'));
        await srv.publish('/item/5', { id: 5 });
        await srv.publish('/item/7', { id: 7 });
        await srv.publish('/nothing', 1);
        await until(() => received.length === 1);
        expect(received).to.equal([{ id: 5 }]);

        await expect(client.subscribe('/unknown', () => { })).to.reject('Subscription not found');
        await expect(client.subscribe('/item/5?x=1', () => { })).to.reject('Subscription path cannot contain query');

        await client.unsubscribe('/item/5');
        await srv.publish('/item/5', { id: 'again' });
        await wait(20);
        expect(received).to.have.length(1);

        await client.disconnect();
        await srv.stop();
    });

    it('authenticates with direct auth and targets users', async () => {

        const srv = await server({ auth: { type: 'direct', index: true } }, 'pulse', basic);
        srv.route({ method: 'GET', path: '/me', handler: (request) => request.auth.credentials.user });
        srv.subscription('/user/{id}', { auth: { scope: ['user-{params.id}'], index: true } });
        srv.subscription('/news', { auth: { mode: 'optional', index: true } });
        await srv.start();

        const john = new Nes.Client(url(srv));
        await john.connect({ auth: { headers: { authorization: header('john') } } });
        const jane = new Nes.Client(url(srv));
        await jane.connect({ auth: { headers: { authorization: header('jane') } } });

        expect((await john.request('/me')).payload).to.equal('john');

        const anonymous = new Nes.Client(url(srv));
        await expect(anonymous.connect()).to.reject('Connection requires authentication');
        const wrong = new Nes.Client(url(srv));
        await expect(wrong.connect({ auth: { headers: { authorization: header('john', 'wrong') } } })).to.reject('Bad username or password');

        await expect(jane.subscribe('/user/john', () => { })).to.reject('Insufficient scope to subscribe, expected any of: user-john');

        const johnGot: unknown[] = [];
        const janeGot: unknown[] = [];
        const johnUpdates: unknown[] = [];
        const janeUpdates: unknown[] = [];
        john.onUpdate = (message: unknown) => johnUpdates.push(message);
        jane.onUpdate = (message: unknown) => janeUpdates.push(message);
        await john.subscribe('/news', (message: unknown) => johnGot.push(message));
        await jane.subscribe('/news', (message: unknown) => janeGot.push(message));
        await john.subscribe('/user/john', (message: unknown) => johnGot.push(message));

        await srv.publish('/news', 'for jane', { user: 'jane' });
        await srv.publish('/user/john', 'private');
        await srv.broadcast('to john', { user: 'john' });
        await srv.broadcast('to all');
        await until(() => johnGot.length === 1 && janeGot.length === 1 && johnUpdates.length === 2 && janeUpdates.length === 1);
        expect(johnGot).to.equal(['private']);
        expect(janeGot).to.equal(['for jane']);
        expect(johnUpdates).to.equal(['to john', 'to all']);
        expect(janeUpdates).to.equal(['to all']);

        expect(() => srv.publish('/user/john', 'x', { user: 'john' })).to.not.throw();
        srv.subscription('/plain');
        await expect(srv.publish('/plain', 'x', { user: 'john' })).to.reject('Subscription auth indexing is disabled');          // as nes: a rejection

        // reauth as the same user keeps the subscriptions; bad credentials close the socket
        await john.reauthenticate({ headers: { authorization: header('john') } });
        await srv.publish('/user/john', 'after reauth');
        await until(() => johnGot.length === 2);

        const closed = new Promise((resolve) => {

            jane.onDisconnect = resolve;
        });
        await expect(jane.reauthenticate({ headers: { authorization: header('jane', 'bad') } })).to.reject('Bad username or password');
        await closed;

        await john.disconnect();
        await jane.disconnect();
        await srv.stop();
    });

    it('authenticates with token auth', async () => {

        const srv = await server({ auth: { type: 'token', password, index: true, maxConnectionsPerUser: 1 } }, 'pulse', basic);
        srv.route({ method: 'GET', path: '/me', handler: (request) => request.auth.credentials.user });
        await srv.start();

        const res = await srv.inject({ url: '/nes/auth', headers: { authorization: header('john') } });
        expect(res.result).to.include({ status: 'authenticated' });
        const token = (res.result as { token: string }).token;

        const client = new Nes.Client(url(srv));
        await client.connect({ auth: token });
        expect((await client.request('/me')).payload).to.equal('john');
        await expect(client.request('/nes/auth')).to.reject('Not Found');

        const second = new Nes.Client(url(srv));
        await expect(second.connect({ auth: token })).to.reject('Too many connections for the authenticated user');

        const forged = new Nes.Client(url(srv));
        await expect(forged.connect({ auth: token.slice(0, -3) + 'abc' })).to.reject('Invalid token');

        await client.disconnect();
        await srv.stop();
    });

    it('authenticates with cookie auth', async () => {

        const srv = await server({ auth: { type: 'cookie', password, isSecure: false } }, 'pulse', basic);
        srv.route({ method: 'GET', path: '/me', handler: (request) => request.auth.credentials.user });
        await srv.start();

        const res = await srv.inject({ url: '/nes/auth', headers: { authorization: header('jane') } });
        const cookie = (res.headers['set-cookie'] as string[])[0]!.split(';')[0]!;

        const client = new Nes.Client(url(srv), { ws: { headers: { cookie } } });
        await client.connect();
        expect((await client.request('/me')).payload).to.equal('jane');
        await client.disconnect();

        const bad = new Nes.Client(url(srv), { ws: { headers: { cookie: 'nes=garbage' } } });
        await expect(bad.connect()).to.reject('Invalid nes authentication cookie');

        const twice = new Nes.Client(url(srv), { ws: { headers: { cookie } } });
        await expect(twice.connect({ auth: 'token' })).to.reject('Connection already authenticated');
        await srv.stop();
    });

    it('applies filters and overrides, revokes and answers messages', async () => {

        const srv = await server({
            onMessage: (_socket: unknown, message: { ask?: string }) => {

                if (message.ask === 'fail') {
                    throw Boom.badData('no');
                }

                return { answer: message.ask };
            }
        });

        srv.subscription('/room/{id}', {
            filter: (_path, message, options) => {

                if (message.secret) {
                    return false;
                }

                if (message.personal) {
                    return { override: { personal: options.params.id, internal: options.internal } };
                }

                return Promise.resolve(true);
            }
        });
        await srv.start();

        const client = new Nes.Client(url(srv));
        await client.connect();
        const got: { message: unknown; flags: unknown }[] = [];
        await client.subscribe('/room/a', (message: unknown, flags: unknown) => got.push({ message, flags }));

        await srv.publish('/room/a', { secret: true });
        await srv.publish('/room/a', { personal: true }, { internal: 'x' });
        await srv.publish('/room/a', { plain: true });
        await until(() => got.length === 2);
        expect(got).to.equal([{ message: { personal: 'a', internal: 'x' }, flags: {} }, { message: { plain: true }, flags: {} }]);

        await srv.eachSocket((socket) => socket.revoke('/room/a', 'bye'), { subscription: '/room/a' });
        await until(() => got.length === 3);
        expect(got[2]).to.equal({ message: 'bye', flags: { revoked: true } });
        expect(client.subscriptions()).to.equal([]);

        expect(await client.message({ ask: 'q' })).to.equal({ payload: { answer: 'q' } });
        const err: any = await expect(client.message({ ask: 'fail' })).to.reject('no');
        expect(err.statusCode).to.equal(422);

        await client.disconnect();
        await srv.stop();
    });

    it('chunks long messages and keeps heartbeats', async () => {

        const srv = await server({ payload: { maxChunkChars: 16 }, heartbeat: { interval: 600, timeout: 500 } });
        srv.route({ method: 'GET', path: '/long', handler: () => ({ text: 'x'.repeat(100) }) });
        srv.subscription('/long');
        await srv.start();

        const client = new Nes.Client(url(srv));
        await client.connect();
        expect((await client.request('/long')).payload).to.equal({ text: 'x'.repeat(100) });

        let got: unknown = null;
        await client.subscribe('/long', (message: unknown) => {

            got = message;
        });
        await srv.publish('/long', 'y'.repeat(70));
        await until(() => got !== null);
        expect(got).to.equal('y'.repeat(70));

        let disconnected = false;
        client.onDisconnect = () => {

            disconnected = true;
        };

        // Counted by the pongs the client sends: once the third went out, two heartbeat checks have passed.
        let pongs = 0;
        const send = client._send;
        client._send = (request: { type: string }, track: boolean) => {

            pongs += request.type === 'ping' ? 1 : 0;
            return send.call(client, request, track);
        };

        await until(() => pongs >= 3 || disconnected, 6000, 'three heartbeats');
        expect(disconnected).to.be.false();
        expect((await client.request('/long')).statusCode).to.equal(200);

        await client.disconnect();
        await srv.stop();
    });

    it('rejects a client that does not answer heartbeats', async () => {

        // The client gives up on its own interval + timeout after a ping: far later than the server's check.
        const srv = await server({ heartbeat: { interval: 400, timeout: 100 } });
        await srv.start();

        const client = new Nes.Client(url(srv));
        await client.connect({ reconnect: false });
        client.onError = () => { };
        client._send = () => Promise.resolve();             // stop answering pings

        const log = await new Promise<{ code: number }>((resolve) => {

            client.onDisconnect = (_willReconnect: boolean, info: { code: number }) => resolve(info);
        });

        expect(log.code).to.equal(4001);
        await srv.stop();
    });
});
