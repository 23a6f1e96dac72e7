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
