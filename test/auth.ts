// Connection authentication through the public API: direct auth headers, sealed tokens and cookies,
// reauth, the auth route's mode, and credential re-verification.

import * as Boom from '@hapi/boom';
import * as Code from '@hapi/code';
import type * as Hapi from '@hapi/hapi';
import * as Iron from '@hapi/iron';
import * as Lab from '@hapi/lab';

import { CloseCode } from '../lib';
import { libraryTimers, Peer, server, url, until } from './helpers';

const { expect } = Code;
const lab = Lab.script();
export { lab };
const { describe, it } = lab;

const password = 'a-password-that-is-at-least-32-characters-long!';

// Credentials are the JSON in the authorization header; `revoked` users stop verifying.
const scheme = (options: { revoked?: Set<string>; verified?: string[]; gate?: () => Promise<void> } = {}) => (srv: Hapi.Server): void => {

    srv.auth.scheme('json', () => ({
        authenticate: (request: Hapi.Request, h: Hapi.ResponseToolkit) => {

            const header = request.headers.authorization;
            if (!header) {
                throw Boom.unauthorized(null, 'Json');
            }

            return h.authenticated({ credentials: { ...JSON.parse(header as string), forwarded: request.headers['x-forwarded-for'] } });
        },
        verify: async (auth: { credentials: { user: string } }) => {

            options.verified?.push(auth.credentials.user);
            await options.gate?.();
            if (options.revoked?.has(auth.credentials.user)) {
                throw Boom.unauthorized('Revoked');
            }
        }
    }) as any);
    srv.auth.strategy('json', 'json');
    srv.route({ method: 'GET', path: '/me', options: { auth: false, handler: (request) => request.auth.credentials ?? 'anonymous' } });
};

const as = (credentials: Record<string, unknown>) => ({ headers: { authorization: JSON.stringify(credentials) } });

describe('auth', () => {

    describe('direct', () => {

        it('refuses auth headers that are not an object of strings', async () => {

            const srv = await server({ auth: { type: 'direct', route: 'json' } }, 'pulse', scheme());
            await srv.start();

            for (const headers of [null, 'authorization', ['authorization']]) {
                const peer = await Peer.open(url(srv));
                const reply = await peer.hello({ auth: { headers } });
                expect(reply.statusCode, String(headers)).to.equal(401);
                expect(reply.payload.message).to.equal('Direct authentication headers must be an object of strings');
                expect((await peer.closedWith()).code).to.equal(CloseCode.policyViolation);
            }

            const peer = await Peer.open(url(srv));
            expect((await peer.hello({ auth: as({ user: 'john' }) })).type).to.equal('hello');
            peer.close();
            await srv.stop();
        });

        it('passes the upgrade x-forwarded-for to the auth route', async () => {

            const srv = await server({ auth: { type: 'direct', route: 'json' } }, 'pulse', scheme());
            await srv.start();

            const proxied = await Peer.open(url(srv), { headers: { 'x-forwarded-for': '203.0.113.7' } });
            await proxied.hello({ auth: as({ user: 'john' }) });
            expect((await proxied.request({ type: 'request', id: 2, method: 'GET', path: '/me' })).payload).to.equal({ user: 'john', forwarded: '203.0.113.7' });

            const direct = await Peer.open(url(srv));
            await direct.hello({ auth: as({ user: 'jane' }) });
            expect((await direct.request({ type: 'request', id: 2, method: 'GET', path: '/me' })).payload).to.equal({ user: 'jane' });

            const forwarded: (string | undefined)[] = [];
            await srv.eachSocket((socket) => forwarded.push(socket.info['x-forwarded-for']));
            expect(forwarded.sort()).to.equal(['203.0.113.7', undefined]);

            proxied.close();
            direct.close();
            await srv.stop();
        });

        it('takes the connection headers of the auth request from the upgrade request, not from the hello', async () => {

            // The auth route's strategy sees what a tunnelled request would: the hello may not say which host,
            // address or cookies the connection has, nor set framing headers.
            const seen = (tunnelHeaders?: string[]) => server({ auth: { type: 'direct', route: 'seen' }, ...(tunnelHeaders ? { tunnelHeaders } : {}) }, 'pulse', (srv) => {

                srv.auth.scheme('seen', () => ({
                    authenticate: (request: Hapi.Request, h: Hapi.ResponseToolkit) => h.authenticated({ credentials: { user: 'u', host: request.info.host, headers: { ...request.headers } } })
                }));
                srv.auth.strategy('seen', 'seen');
                srv.route({ method: 'GET', path: '/me', options: { auth: false, handler: (request) => request.auth.credentials } });
            });

            const forged = {
                Host: 'admin.example', 'x-forwarded-for': '6.6.6.6', 'x-forwarded-host': 'evil.example', forwarded: 'for=6.6.6.6',
                cookie: 'session=forged', 'x-real-ip': '6.6.6.6', 'content-length': '1', 'transfer-encoding': 'chunked', Authorization: 'Bearer kept', 'x-app': 'kept'
            };

            const srv = await seen();
            await srv.start();
            const upgrade = { 'x-forwarded-for': '10.0.0.1', cookie: 'session=upgrade' };
            const peer = await Peer.open(url(srv), { headers: upgrade });
            expect((await peer.hello({ auth: { headers: forged } })).type).to.equal('hello');
            const { host, headers } = (await peer.request({ type: 'request', id: 2, method: 'GET', path: '/me' })).payload;
            expect(host).to.equal(`127.0.0.1:${srv.info.port}`);
            expect(headers).to.include({ 'x-forwarded-for': '10.0.0.1', cookie: 'session=upgrade', authorization: 'Bearer kept', 'x-app': 'kept' });
            for (const name of ['x-forwarded-host', 'forwarded', 'x-real-ip', 'transfer-encoding']) {
                expect(headers[name], name).to.not.exist();
            }

            expect(headers['content-length']).to.not.equal('1');

            // A reauth's headers likewise.
            expect((await peer.reply({ type: 'reauth', id: 3, auth: { headers: { ...forged, 'x-app': 'again' } } })).statusCode).to.not.exist();
            const reauthed = (await peer.reply({ type: 'request', id: 4, method: 'GET', path: '/me' })).payload;
            expect(reauthed.host).to.equal(`127.0.0.1:${srv.info.port}`);
            expect(reauthed.headers).to.include({ 'x-forwarded-for': '10.0.0.1', cookie: 'session=upgrade', 'x-app': 'again' });
            expect(reauthed.headers.forwarded).to.not.exist();

            // Without a forwarded address on the upgrade request, the hello cannot supply one either.
            const direct = await Peer.open(url(srv));
            await direct.hello({ auth: { headers: forged } });
            const unproxied = (await direct.request({ type: 'request', id: 2, method: 'GET', path: '/me' })).payload.headers;
            expect(unproxied['x-forwarded-for']).to.not.exist();
            expect(unproxied.cookie).to.not.exist();

            peer.close();
            direct.close();
            await srv.stop();

            // tunnelHeaders lets the hello set the connection headers it names, as for tunnelled requests.
            const allowing = await seen(['x-forwarded-for']);
            await allowing.start();
            const allowed = await Peer.open(url(allowing), { headers: upgrade });
            await allowed.hello({ auth: { headers: forged } });
            const chosen = (await allowed.request({ type: 'request', id: 2, method: 'GET', path: '/me' })).payload.headers;
            expect(chosen).to.include({ 'x-forwarded-for': '6.6.6.6', cookie: 'session=upgrade' });
            expect(chosen.forwarded).to.not.exist();
            allowed.close();
            await allowing.stop();
        });

        it('needs no credentials when the auth route has no auth', async () => {

            const srv = await server({ auth: { type: 'direct', route: false } }, 'pulse', scheme());
            await srv.start();

            const peer = await Peer.open(url(srv));
            expect((await peer.hello()).type).to.equal('hello');
            expect((await peer.request({ type: 'request', id: 2, method: 'GET', path: '/me' })).payload).to.equal('anonymous');
            peer.close();
            await srv.stop();
        });

        it('refuses a reauth that yields no credentials', async () => {

            const srv = await server({ auth: { type: 'direct', route: { strategy: 'json', mode: 'optional' } } }, 'pulse', scheme());
            await srv.start();

            const peer = await Peer.open(url(srv));
            await peer.hello({ auth: as({ user: 'john' }) });
            const reply = await peer.request({ type: 'reauth', id: 2, auth: { headers: {} } });
            expect(reply.statusCode).to.equal(401);
            expect(reply.payload.message).to.equal('Reauthentication yielded no credentials');
            expect((await peer.closedWith()).code).to.equal(CloseCode.authExpired);
            await srv.stop();
        });
    });

    describe('sealed', () => {

        it('refuses tokens sealed with our password that carry no credentials object', async () => {

            const srv = await server({ auth: { type: 'token', password, route: 'json' } }, 'pulse', scheme());
            await srv.start();

            for (const sealed of [null, {}, { credentials: 'john' }]) {
                const token = await Iron.seal(sealed, password, Iron.defaults);
                const peer = await Peer.open(url(srv));
                const reply = await peer.hello({ auth: token });
                expect(reply.statusCode, JSON.stringify(sealed)).to.equal(401);
                expect(reply.payload.message).to.equal('Invalid token');
            }

            await srv.stop();
        });

        it('seals and unseals tokens with the configured iron options', async () => {

            const short = 'sixteen-chars-pw';
            const iron = { ...Iron.defaults, encryption: { ...Iron.defaults.encryption, minPasswordlength: 16 }, integrity: { ...Iron.defaults.integrity, minPasswordlength: 16 } };
            const srv = await server({ auth: { type: 'token', password: short, iron, route: 'json' } }, 'pulse', scheme());
            await srv.start();

            const res = await srv.inject({ url: '/nes/auth', headers: { authorization: JSON.stringify({ user: 'john' }) } });
            expect(res.statusCode).to.equal(200);                                  // Iron.defaults would refuse a 16-character password
            const peer = await Peer.open(url(srv));
            await peer.hello({ auth: (res.result as { token: string }).token });
            expect((await peer.request({ type: 'request', id: 2, method: 'GET', path: '/me' })).payload).to.equal({ user: 'john' });
            peer.close();
            await srv.stop();
        });

        it('opens a token sealed by another node that shares auth.password, and not one sealed with another password', async () => {

            const shared = await server({ auth: { type: 'token', password, route: 'json' } }, 'pulse', scheme());
            const sibling = await server({ auth: { type: 'token', password, route: 'json' } }, 'pulse', scheme());
            const stranger = await server({ auth: { type: 'token', route: 'json' } }, 'pulse', scheme());           // its own random password
            await Promise.all([shared.start(), sibling.start(), stranger.start()]);

            const res = await shared.inject({ url: '/nes/auth', headers: { authorization: JSON.stringify({ user: 'john' }) } });
            const token = (res.result as { token: string }).token;

            const peer = await Peer.open(url(sibling));
            expect((await peer.hello({ auth: token })).type).to.equal('hello');
            expect((await peer.request({ type: 'request', id: 2, method: 'GET', path: '/me' })).payload).to.equal({ user: 'john' });

            const refused = await Peer.open(url(stranger));
            const reply = await refused.hello({ auth: token });
            expect(reply.statusCode).to.equal(401);
            expect((await refused.closedWith()).code).to.equal(CloseCode.policyViolation);

            peer.close();
            await Promise.all([shared.stop(), sibling.stop(), stranger.stop()]);
        });

        it('treats a cookie without nes credentials as no cookie', async () => {

            const srv = await server({ auth: { type: 'cookie', password, isSecure: false, route: 'json' } }, 'pulse', scheme());
            await srv.start();

            for (const cookie of ['other=1', 'nes=' + await Iron.seal('john', password, Iron.defaults), 'nes=' + await Iron.seal({ user: 'john' }, password, Iron.defaults)]) {
                const peer = await Peer.open(url(srv), { headers: { cookie } });
                const reply = await peer.hello();
                expect(reply.statusCode, cookie).to.equal(401);
                expect(reply.payload.message).to.equal('Connection requires authentication');
            }

            await srv.stop();
        });

        it('lets a cookie-authenticated socket reauth with a sealed value', async () => {

            const srv = await server({ auth: { type: 'cookie', password, isSecure: false, route: 'json' } }, 'pulse', scheme());
            await srv.start();

            const cookieFor = async (user: string): Promise<string> => {

                const res = await srv.inject({ url: '/nes/auth', headers: { authorization: JSON.stringify({ user }) } });
                return (res.headers['set-cookie'] as string[])[0]!.split(';')[0]!;
            };

            const john = await cookieFor('john');
            const jane = (await cookieFor('jane')).slice('nes='.length);
            const peer = await Peer.open(url(srv), { headers: { cookie: john } });
            await peer.hello();
            expect((await peer.request({ type: 'request', id: 2, method: 'GET', path: '/me' })).payload).to.equal({ user: 'john' });
            expect(await peer.request({ type: 'reauth', id: 3, auth: jane })).to.equal({ type: 'reauth', id: 3 });
            expect((await peer.request({ type: 'request', id: 4, method: 'GET', path: '/me' })).payload).to.equal({ user: 'jane' });
            peer.close();
            await srv.stop();
        });
    });

    describe('verification', () => {

        const later = async <T>(ms: number, run: () => Promise<T>): Promise<T> => {

            const now = Date.now;
            Date.now = () => now() + ms;
            try {
                return await run();
            }
            finally {
                Date.now = now;
            }
        };

        it('re-verifies on a message once the default interval (15 s without heartbeat) has passed', async () => {

            const revoked = new Set<string>();
            const verified: string[] = [];
            const srv = await server({ auth: { type: 'direct', route: 'json' }, heartbeat: false }, 'pulse', scheme({ revoked, verified }));
            await srv.start();

            const peer = await Peer.open(url(srv));
            await peer.hello({ auth: as({ user: 'john' }) });
            revoked.add('john');

            const early = await later(14000, () => peer.request({ type: 'request', id: 2, method: 'GET', path: '/me' }));
            expect(early.statusCode).to.equal(200);
            expect(verified).to.equal([]);

            const late = await later(15500, () => peer.request({ type: 'request', id: 3, method: 'GET', path: '/me' }));
            expect(late).to.include({ type: 'request', id: 3, statusCode: 403 });
            expect(late.payload.message).to.equal('Credential verification failed');
            expect(verified).to.equal(['john']);
            expect((await peer.closedWith()).code).to.equal(CloseCode.authExpired);
            await srv.stop();
        });

        it('re-verifies credentials that are due before a message, and serves it when they still hold', async () => {

            const verified: string[] = [];
            const srv = await server({ auth: { type: 'direct', route: 'json', minAuthVerifyInterval: 1000 }, heartbeat: false }, 'pulse', scheme({ verified }));
            await srv.start();

            const peer = await Peer.open(url(srv));
            await peer.hello({ auth: as({ user: 'ann' }) });
            const realNow = Date.now;
            Date.now = () => realNow() + 1500;                              // the interval has passed for this socket
            try {
                const reply = await peer.reply({ type: 'request', id: 2, method: 'GET', path: '/me' });
                expect(reply.payload).to.include({ user: 'ann' });
            }
            finally {
                Date.now = realNow;
            }

            expect(verified).to.equal(['ann']);
            peer.close();
            await srv.stop();
        });

        it('does not schedule another sweep once the server stopped during one', async () => {

            const timers = libraryTimers();

            let open!: () => void;
            const gate = new Promise<void>((resolve) => {

                open = resolve;
            });

            const verified: string[] = [];
            const srv = await server({ auth: { type: 'direct', route: 'json', minAuthVerifyInterval: 20 }, heartbeat: false }, 'pulse', scheme({ verified, gate: () => gate }));
            await srv.start();

            const peer = await Peer.open(url(srv));
            await peer.hello({ auth: as({ user: 'john' }) });
            await until(() => verified.length === 1);                           // the sweep waits on the strategy
            await srv.stop();
            open();

            try {
                await until(() => timers.pending() === 0, 3000, 'no listener timer left');
            }
            finally {
                timers.stop();
            }

            expect(verified).to.equal(['john']);
        });
    });
});
