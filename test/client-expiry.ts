// Client side of the expiry extension (protocol.md §8.3) and auth functions: fresh credentials for every hello,
// renewal before expiry on the same socket, failures reported through onError, and onExpiring for applications
// that renew themselves.

import * as Code from '@hapi/code';
import type * as Hapi from '@hapi/hapi';
import * as Lab from '@hapi/lab';

import { Client, PulseError } from '../lib/client';
import type { ClientAuth, DisconnectLog } from '../lib/client';
import { expiringBasic, expiringHeader, server, teardown, until, url, wait } from './helpers';

const { expect } = Code;
const lab = Lab.script();
export { lab };
const { describe, it } = lab;


// ---- Harness ----

const defer = teardown(lab);

const basic = expiringBasic;
const header = expiringHeader;

const start = async (auth: Record<string, unknown> = {}): Promise<Hapi.Server> => {

    const srv = await server({ auth: { type: 'direct', expiryNotice: 100, ...auth } }, 'pulse', basic);
    srv.subscription('/news');
    srv.route({ method: 'GET', path: '/me', handler: (request) => request.auth.credentials });
    await srv.start();
    defer(() => srv.stop({ timeout: 100 }));
    return srv;
};

interface Watched {
    client: Client;
    errors: PulseError[];
    disconnects: DisconnectLog[];
    expiring: number[];
    news: unknown[];
}

const watched = (srv: Hapi.Server): Watched => {

    const c = new Client(url(srv));
    const result: Watched = { client: c, errors: [], disconnects: [], expiring: [], news: [] };
    c.onError = (err) => result.errors.push(err);
    c.onDisconnect = (_willReconnect, log) => result.disconnects.push(log);
    defer(() => c.disconnect());
    return result;
};


// ---- Tests ----

describe('Client credentials', () => {

    // Renewing credentials: a notice long enough for the round trip on a loaded machine.
    const lifetime = 1000;
    const notice = 500;

    it('renews credentials with the auth function before they expire, on the same socket', async () => {

        const srv = await start({ expiryNotice: notice });
        const { client: c, errors, disconnects, expiring, news } = watched(srv);
        const calls: number[] = [];
        c.onExpiring = (expiresAt) => expiring.push(expiresAt);
        const auth = async () => {

            calls.push(Date.now());
            await wait(1);
            return header('john', lifetime);
        };

        const connectedAt = Date.now();
        await c.connect({ auth });
        await c.subscribe('/news', (message) => news.push(message));
        const id = c.id;
        expect(calls).to.have.length(1);

        await until(() => calls.length >= 2 && expiring.length >= 1 && Date.now() > expiring[0]! + 100, 3000, 'past the first expiry');
        expect(expiring[0]).to.be.within(connectedAt + lifetime, Date.now());
        expect(c.id).to.equal(id);
        expect(disconnects).to.equal([]);
        expect(errors).to.equal([]);

        await srv.publish('/news', 'still here');
        await until(() => news.length === 1);
        expect((await c.request('/me')).payload).to.include({ user: 'john' });
    });

    it('reports a renewal the server refuses, then reconnects with fresh credentials', async () => {

        const srv = await start();
        const { client: c, errors, disconnects, news } = watched(srv);
        let calls = 0;
        const auth = () => (++calls === 2 ? header('bad', 1000) : header('john', 250));
        await c.connect({ auth, delay: 10, maxDelay: 10 });
        await c.subscribe('/news', (message) => news.push(message));
        const id = c.id;

        await until(() => disconnects.length === 1 && c.id !== null, 2000);
        expect(disconnects[0]!.code).to.equal(4002);
        expect(errors[0]!.type).to.equal('server');
        expect(errors[0]!.statusCode).to.equal(401);
        expect(calls).to.equal(3);                                          // hello, renewal, hello again
        expect(c.id).to.not.equal(id);

        await srv.publish('/news', 'back');
        await until(() => news.length === 1);
    });

    it('reports an auth function that fails a renewal; the socket expires and reconnects', async () => {

        const srv = await start();
        const { client: c, errors, disconnects } = watched(srv);
        let calls = 0;
        const auth = () => {

            if (++calls === 2) {
                throw new Error('token service down');
            }

            return header('john', 250);
        };

        await c.connect({ auth, delay: 10, maxDelay: 10 });
        await until(() => disconnects.length === 1 && c.id !== null, 2000);
        expect(errors[0]).to.be.an.instanceof(PulseError);
        expect(errors[0]!.type).to.equal('user');
        expect(errors[0]!.message).to.equal('token service down');
        expect(disconnects[0]).to.include({ code: 4002, reason: 'Credentials expired' });
        expect(calls).to.equal(3);
    });

    it('calls onExpiring with static credentials so that the application renews them', async () => {

        const srv = await start({ expiryNotice: notice });
        const { client: c, errors, disconnects, news } = watched(srv);
        const expiring: number[] = [];
        c.onExpiring = (expiresAt) => {

            expiring.push(expiresAt);
            c.reauthenticate(header('john', 'none'));
        };

        await c.connect({ auth: header('john', lifetime) });
        await c.subscribe('/news', (message) => news.push(message));
        await until(() => expiring.length >= 1 && Date.now() > expiring[0]! + 100, 3000, 'past the first expiry');
        expect(expiring).to.have.length(1);
        expect(disconnects).to.equal([]);
        expect(errors).to.equal([]);
        await srv.publish('/news', 'renewed');
        await until(() => news.length === 1);
    });

    it('does not ask for expiry notices without an auth function or onExpiring', async () => {

        const srv = await start();
        const { client: c, disconnects } = watched(srv);
        await c.connect({ auth: header('john', 150), reconnect: false });
        await until(() => disconnects.length === 1);
        expect(disconnects[0]).to.include({ code: 4002, willReconnect: false });
    });

    it('fails a connection attempt when the auth function fails, and retries it', async () => {

        const srv = await start();
        const { client: c, errors } = watched(srv);
        let calls = 0;
        const connected = new Promise<void>((resolve) => (c.onConnect = resolve));
        const auth = () => (++calls < 3 ? Promise.reject(new Error(`no token ${calls}`)) : header('john', 'none'));
        const err = await expect(c.connect({ auth, delay: 10, maxDelay: 10 })).to.reject(PulseError, 'no token 1');
        expect(err.type).to.equal('user');
        await connected;
        expect(calls).to.equal(3);
        expect(errors.map((error) => error.message)).to.equal(['no token 2']);
        expect((await c.request('/me')).payload).to.include({ user: 'john' });
    });

    it('bounds a slow auth function with the connection timeout', async () => {

        const srv = await start();
        const { client: c } = watched(srv);
        // The function answers only after the timeout, however long the socket took to open
        let called = false;
        let provided = false;
        let release!: () => void;
        const gate = new Promise<void>((resolve) => (release = resolve));
        const auth = async () => {

            called = true;
            await gate;
            provided = true;
            return header('john', 'none');
        };

        await expect(c.connect({ auth, timeout: 500, reconnect: false })).to.reject(PulseError, 'Connection timed out');
        expect(called).to.be.true();
        release();
        await until(() => provided);
        await wait(20);
        expect(c.id).to.be.null();
        expect(srv.pulseStats().sockets).to.equal(0);
    });

    it('fails the attempt when the socket closes while the auth function runs', async () => {

        const srv = await start();
        const { client: c, disconnects } = watched(srv);
        let calls = 0;
        const auth = async () => {

            if (++calls === 1) {
                await srv.eachSocket((socket) => socket.disconnect());
                await wait(20);
            }

            return header('john', 'none');
        };

        const connected = new Promise<void>((resolve) => (c.onConnect = resolve));
        await expect(c.connect({ auth, delay: 10, maxDelay: 10 })).to.reject(PulseError, 'Socket error');
        await connected;
        expect(calls).to.equal(2);
        expect(disconnects).to.have.length(1);
    });

    it('sends no credentials when the auth function returns none', async () => {

        const srv = await start({ route: { mode: 'optional' } });
        const { client: c } = watched(srv);
        await c.connect({ auth: () => null });
        expect(c.id).to.be.a.string();
    });

    it('switches between auth functions and values with overrideReconnectionAuth', async () => {

        const srv = await start({ expiryNotice: notice });
        const { client: c, disconnects } = watched(srv);
        await c.connect({ auth: header('john', 'none'), delay: 10, maxDelay: 10 });

        let calls = 0;
        expect(c.overrideReconnectionAuth(() => (++calls, header('jane', lifetime)))).to.be.true();
        let connected = new Promise<void>((resolve) => (c.onConnect = resolve));
        await srv.eachSocket((socket) => socket.disconnect());
        await connected;
        expect((await c.request('/me')).payload).to.include({ user: 'jane' });
        const id = c.id;
        const pastExpiry = Date.now() + lifetime + 100;                     // the credentials were issued before
        await until(() => calls >= 2 && Date.now() > pastExpiry, 3000, 'renewed by the function');
        expect(c.id).to.equal(id);

        expect(c.overrideReconnectionAuth(header('jim', 'none'))).to.be.true();
        connected = new Promise<void>((resolve) => (c.onConnect = resolve));
        await srv.eachSocket((socket) => socket.disconnect());
        await connected;
        expect((await c.request('/me')).payload).to.include({ user: 'jim' });
        expect(disconnects).to.have.length(2);
    });
});
