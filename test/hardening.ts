// What a hostile review found (issue 12), each defect reproduced through the public API over real
// sockets: raw protocol peers against one node, and two nodes over the real Redis where nodes matter.

import { randomBytes } from 'node:crypto';
import * as V8 from 'node:v8';
import * as Vm from 'node:vm';

import * as Boom from '@hapi/boom';
import * as Code from '@hapi/code';
import type * as Hapi from '@hapi/hapi';
import * as Lab from '@hapi/lab';
import * as Iron from '@hapi/iron';
import { createClient } from '@redis/client';

import { CloseCode, MemoryBroker } from '../lib';
import { RedisBroker } from '../lib/redis';
import { deleteRedisKeys, Peer, redisAvailable, redisUrl, server, skipWithoutRedis, teardown, url, until, wait } from './helpers';

const { expect } = Code;
const lab = Lab.script();
export { lab };
const { after, before, describe, it } = lab;

const prefix = `pulse-test:${process.pid}:${randomBytes(4).toString('hex')}:hardening:`;
let prefixes = 0;
const uniquePrefix = (): string => `${prefix}${++prefixes}:`;
skipWithoutRedis('two-node hardening tests');

const later = teardown(lab);

// Unhandled rejections end a Node 20 process: none may happen anywhere in this script.
const rejections: unknown[] = [];
const onRejection = (err: unknown): void => {

    rejections.push(err);
};

before(() => {

    process.on('unhandledRejection', onRejection);
});

after(async () => {

    process.removeListener('unhandledRejection', onRejection);
    expect(rejections).to.equal([]);
    if (redisAvailable) {
        await deleteRedisKeys(prefix);
    }
});

// Credentials are the JSON in the authorization header. `control` decides what verify() does.
interface Control {
    revoked: Set<unknown>;
    hang: Set<unknown>;
    delay: number;
    verified: number;
    verifyGate: Promise<void> | null;                  // checks wait on it while set
    authGate: Promise<void> | null;                    // authentications of credentials with `gated` wait on it
    authenticating: number;
}

const control = (): Control => ({ revoked: new Set(), hang: new Set(), delay: 0, verified: 0, verifyGate: null, authGate: null, authenticating: 0 });

const gate = (): { promise: Promise<void>; open: () => void } => {

    let open!: () => void;
    const promise = new Promise<void>((resolve) => {

        open = resolve;
    });

    return { promise, open };
};

const json = (ctl: Control = control()) => (srv: Hapi.Server): void => {

    srv.auth.scheme('json', () => ({
        authenticate: async (request: Hapi.Request, h: Hapi.ResponseToolkit) => {

            const header = request.headers.authorization;
            if (!header) {
                throw Boom.unauthorized(null, 'Json');
            }

            const credentials = JSON.parse(header as string);
            if (credentials.gated) {
                ++ctl.authenticating;
                await ctl.authGate;
            }

            return h.authenticated({ credentials });
        },
        verify: async (auth: { credentials: { user: unknown } }) => {

            ++ctl.verified;
            const user = auth.credentials.user;                      // the credentials being checked, whatever happens meanwhile
            if (ctl.hang.has(user)) {
                await new Promise(() => { });
            }

            if (ctl.delay) {
                await wait(ctl.delay);
            }

            await ctl.verifyGate;

            if (ctl.revoked.has(user)) {
                throw Boom.unauthorized('Revoked');
            }
        }
    }) as any);
    srv.auth.strategy('json', 'json');
    srv.auth.default({ strategy: 'json', mode: 'optional' });
};

const as = (credentials: Record<string, unknown>) => ({ headers: { authorization: JSON.stringify(credentials) } });

// `setup` runs before the plugin is registered (auth strategies), `configure` after it (subscriptions).
const start = async (options: Record<string, unknown>, setup: (srv: Hapi.Server) => void | Promise<void>, configure?: (srv: Hapi.Server) => void): Promise<Hapi.Server> => {

    const srv = await server(options, 'pulse', setup);
    configure?.(srv);
    await srv.start();
    later(() => srv.stop());
    return srv;
};

const open = async (srv: Hapi.Server, hello: Record<string, unknown> = {}): Promise<Peer> => {

    const peer = ponging(await Peer.open(url(srv)));
    later(() => peer.close());
    peer.send({ type: 'hello', id: 1, version: '2', ...hello });
    const reply = await answer(peer, 'hello', 1);
    expect(reply.type, JSON.stringify(reply)).to.equal('hello');
    expect(reply.statusCode, JSON.stringify(reply)).to.not.exist();
    return peer;
};

const frames = (peer: Peer): any[] => peer.frames.map((frame) => JSON.parse(frame));
const pubs = (peer: Peer): any[] => frames(peer).filter((message) => message.type === 'pub');

// Answers heartbeats as a client does.
const ponging = (peer: Peer): Peer => {

    peer.ws.on('message', (data) => {

        if (JSON.parse(data.toString()).type === 'ping') {
            peer.send({ type: 'ping', id: 'pong' });
        }
    });

    return peer;
};

// The frame answering (type, id), once it arrives.
const answer = async (peer: Peer, type: string, id: unknown): Promise<any> => {

    await until(() => frames(peer).some((frame) => frame.type === type && frame.id === id), 3000, `${type} ${id}`);
    return frames(peer).find((frame) => frame.type === type && frame.id === id);
};

// Logs of one server, by tag.
const logs = (srv: Hapi.Server, tag: string): { tags: string[]; data: any }[] => {

    const seen: { tags: string[]; data: any }[] = [];
    srv.events.on('log', (event: any) => {

        if (event.tags.includes(tag)) {
            seen.push({ tags: event.tags, data: event.data ?? event.error });
        }
    });

    return seen;
};

describe('hardening (issue 12)', () => {

    describe('a filter override that cannot be serialised', () => {

        const overrides = (srv: Hapi.Server): void => {

            srv.subscription('/room/{id}', {
                filter: async (_path, message, { credentials }) => {

                    await wait(1);
                    if (credentials?.user === 'bad') {
                        return { override: { ...message, big: BigInt(1) } };
                    }

                    return true;
                }
            });
        };

        it('is logged with its path while every other socket and every later publish is delivered (one node)', async () => {

            const srv = await start({ auth: { type: 'direct' } }, json(), overrides);
            const errors = logs(srv, 'filter');

            const bad = await open(srv, { auth: as({ user: 'bad' }) });
            const good = [await open(srv, { auth: as({ user: 'a' }) }), await open(srv, { auth: as({ user: 'b' }) })];
            for (const peer of [bad, ...good]) {
                expect((await peer.reply({ type: 'sub', id: 2, path: '/room/1' })).type).to.equal('sub');
            }

            await srv.publish('/room/1', { n: 1 });
            await srv.publish('/room/1', { n: 2 });
            for (const peer of good) {
                await until(() => pubs(peer).length === 2);
                expect(pubs(peer).map((pub) => pub.message)).to.equal([{ n: 1 }, { n: 2 }]);
            }

            expect(pubs(bad)).to.equal([]);
            expect(errors.length).to.equal(2);
            expect(errors[0]!.data.path).to.equal('/room/1');
        });

        it('never crashes a node that received the publish from another node, and delivers everything else', { skip: !redisAvailable }, async () => {

            const brokerPrefix = uniquePrefix();
            const nodes: Hapi.Server[] = [];
            for (let i = 0; i < 2; ++i) {
                nodes.push(await start({ auth: { type: 'direct' }, broker: new RedisBroker({ url: redisUrl, prefix: brokerPrefix }) }, json(), overrides));
            }

            const [a, b] = nodes as [Hapi.Server, Hapi.Server];
            const errors = logs(b, 'filter');
            const bad = await open(b, { auth: as({ user: 'bad' }) });
            const good = await open(b, { auth: as({ user: 'a' }) });
            const local = await open(a, { auth: as({ user: 'a' }) });
            for (const peer of [bad, good, local]) {
                expect((await peer.reply({ type: 'sub', id: 2, path: '/room/1' })).type).to.equal('sub');
            }

            for (let n = 1; n <= 3; ++n) {
                await a.publish('/room/1', { n });
            }

            for (const peer of [good, local]) {
                await until(() => pubs(peer).length === 3);
                expect(pubs(peer).map((pub) => pub.message.n)).to.equal([1, 2, 3]);
            }

            await until(() => errors.length === 3);
            expect(errors.every((error) => error.data.path === '/room/1')).to.be.true();
            expect(pubs(bad)).to.equal([]);
            expect(rejections).to.equal([]);
        });
    });

    describe('credential re-verification', () => {

        for (const heartbeat of [false, { interval: 200, timeout: 150 }] as const) {

            it(`refuses a request, a message and a sub once credentials stop verifying (heartbeat ${heartbeat ? 'on' : 'off'})`, async () => {

                const ctl = control();
                const srv = await start({ auth: { type: 'direct', minAuthVerifyInterval: 100000 }, heartbeat, onMessage: () => 'echo' }, json(ctl), (s) => {

                    s.subscription('/topic');
                    s.route({ method: 'GET', path: '/me', handler: (request) => request.auth.credentials });
                });

                for (const message of [
                    { type: 'request', id: 2, method: 'GET', path: '/me' },
                    { type: 'message', id: 2, message: 'hi' },
                    { type: 'sub', id: 2, path: '/topic' }
                ]) {
                    const user = `u-${message.type}`;
                    const peer = await open(srv, { auth: as({ user }) });
                    expect((await peer.reply({ ...message, id: 10 })).statusCode ?? 200).to.equal(200);
                    ctl.revoked.add(user);
                    const now = Date.now;
                    Date.now = () => now() + 200000;                       // a verification is due (the sweep is far off)
                    try {
                        const reply = await peer.reply(message);
                        expect(reply.statusCode).to.equal(403);
                        expect(reply.payload.message).to.equal('Credential verification failed');
                        expect((await peer.closedWith()).code).to.equal(CloseCode.authExpired);
                    }
                    finally {
                        Date.now = now;
                    }
                }

                expect(srv.pulseStats().subscriptions).to.equal(0);
            });

            it(`closes an idle socket whose credentials stop verifying within an interval (heartbeat ${heartbeat ? 'on' : 'off'})`, async () => {

                const ctl = control();
                const interval = 200;
                const srv = await start({ auth: { type: 'direct', minAuthVerifyInterval: interval }, heartbeat }, json(ctl));
                const idle = await open(srv, { auth: as({ user: 'idle' }) });
                const kept = await open(srv, { auth: as({ user: 'kept' }) });
                await wait(interval + 50);
                ctl.revoked.add('idle');
                const revokedAt = Date.now();
                expect(await idle.closedWith()).to.equal({ code: CloseCode.authExpired, reason: 'Credential verification failed' });
                expect(Date.now() - revokedAt).to.be.below(interval + 250);      // one interval, plus slack for a loaded machine
                expect(kept.closed).to.be.null();
            });
        }

        it('makes every message of a burst wait for the pending verification', async () => {

            const ctl = control();
            ctl.delay = 50;
            let ran = 0;
            const srv = await start({ auth: { type: 'direct', minAuthVerifyInterval: 100000 }, heartbeat: false }, json(ctl), (s) => {

                s.route({ method: 'GET', path: '/act', handler: () => ++ran });
            });

            const peer = await open(srv, { auth: as({ user: 'john' }) });
            ctl.revoked.add('john');
            const now = Date.now;
            Date.now = () => now() + 200000;                               // a verification is due
            try {
                for (let id = 2; id < 12; ++id) {
                    peer.send({ type: 'request', id, method: 'GET', path: '/act' });
                }

                expect((await peer.closedWith()).code).to.equal(CloseCode.authExpired);
            }
            finally {
                Date.now = now;
            }

            expect(ran).to.equal(0);
            const replies = frames(peer).filter((frame) => frame.type === 'request');
            expect(replies.length).to.equal(10);
            expect(replies.every((reply) => reply.statusCode === 403)).to.be.true();
        });

        it('does not close a socket whose reauth completed while the sweep checked its previous credentials', async () => {

            const ctl = control();
            const srv = await start({ auth: { type: 'direct', minAuthVerifyInterval: 50 }, heartbeat: false }, json(ctl), (s) => {

                s.route({ method: 'GET', path: '/me', handler: (request) => request.auth.credentials });
            });

            const auth = gate();
            ctl.authGate = auth.promise;
            const peer = await open(srv, { auth: as({ user: 'old' }) });
            const reauth = peer.reply({ type: 'reauth', id: 2, auth: as({ user: 'new', gated: true }) }, 5000);
            await until(() => ctl.authenticating === 1);                  // the reauth is under way (past its own check)

            const check = gate();
            ctl.verifyGate = check.promise;
            ctl.revoked.add('old');
            const checked = ctl.verified;
            await until(() => ctl.verified > checked);                    // the sweep checks 'old', held until the reauth is done
            auth.open();
            expect(await reauth).to.equal({ type: 'reauth', id: 2 });
            check.open();                                                 // the check of 'old' fails now
            ctl.verifyGate = null;
            await wait(150);
            expect(peer.closed).to.be.null();
            expect((await peer.reply({ type: 'request', id: 3, method: 'GET', path: '/me' })).payload).to.equal({ user: 'new', gated: true });
        });

        it('sweeps sockets concurrently, and counts a verification that never settles as failed', async () => {

            const ctl = control();
            ctl.delay = 60;
            const interval = 300;
            const srv = await start({ auth: { type: 'direct', minAuthVerifyInterval: interval, verifyTimeout: 150 }, heartbeat: false }, json(ctl));

            const hung = await open(srv, { auth: as({ user: 'hung' }) });
            const peers: Peer[] = [];
            for (let i = 0; i < 50; ++i) {
                peers.push(await open(srv, { auth: as({ user: `user-${i}` }) }));
            }

            ctl.hang.add('hung');
            await wait(interval);                                           // the hung verification is under way
            for (let i = 0; i < 50; ++i) {
                ctl.revoked.add(`user-${i}`);
            }

            const revokedAt = Date.now();
            await Promise.all(peers.map((peer) => peer.closedWith(5000)));
            expect(Date.now() - revokedAt).to.be.below(interval + 60 + 400);      // one interval and one verify latency, plus slack (serial: 3 s)
            expect(peers.every((peer) => peer.closed!.code === CloseCode.authExpired)).to.be.true();
            expect((await hung.closedWith(2000)).code).to.equal(CloseCode.authExpired);
        });
    });

    describe('subscriptions and reauth', () => {

        const gated = () => {

            let open!: () => void;
            let entered!: () => void;
            const gate = new Promise<void>((resolve) => {

                open = resolve;
            });
            const inside = new Promise<void>((resolve) => {

                entered = resolve;
            });

            return { gate, inside, open: () => open(), entered: () => entered() };
        };

        it('checks a sub against the credentials current when it becomes live', async () => {

            const g = gated();
            const srv = await start({ auth: { type: 'direct' } }, json(), (s) => {

                s.subscription('/secret', {
                    auth: { scope: 'secret' },
                    onSubscribe: async () => {

                        g.entered();
                        await g.gate;
                    }
                });
            });

            const peer = await open(srv, { auth: as({ user: 'john', scope: ['secret'] }) });
            peer.send({ type: 'sub', id: 2, path: '/secret' });
            await g.inside;
            expect(await peer.reply({ type: 'reauth', id: 3, auth: as({ user: 'john', scope: [] }) })).to.equal({ type: 'reauth', id: 3 });
            g.open();
            expect((await answer(peer, 'sub', 2)).statusCode).to.equal(403);

            await srv.publish('/secret', 'leak');
            await wait(50);
            expect(pubs(peer)).to.equal([]);
            expect(srv.pulseStats().subscriptions).to.equal(0);
        });

        it('revokes every subscription when a reauth changes the user, and one still in onSubscribe fails', async () => {

            const g = gated();
            const srv = await start({ auth: { type: 'direct', route: { strategies: ['json', 'other'], mode: 'optional' } } }, (s) => {

                json()(s);
                s.auth.scheme('other', () => ({
                    authenticate: (request: Hapi.Request, h: Hapi.ResponseToolkit) => {

                        const user = request.headers['x-other'];
                        return user ? h.authenticated({ credentials: { user } }) : h.unauthenticated(Boom.unauthorized(null, 'Other'));
                    }
                }));
                s.auth.strategy('other', 'other');
            }, (s) => {

                s.subscription('/feed/{user}', {
                    onSubscribe: (socket, _path, params) => {

                        if (socket.auth.credentials?.user !== params.user) {
                            throw Boom.forbidden();
                        }
                    }
                });
                s.subscription('/slow', {
                    onSubscribe: async () => {

                        g.entered();
                        await g.gate;
                    }
                });
                s.subscription('/public');
            });

            const peer = await open(srv, { auth: as({ user: 'alice' }) });
            expect((await peer.reply({ type: 'sub', id: 2, path: '/feed/alice' })).type).to.equal('sub');
            expect((await peer.reply({ type: 'sub', id: 3, path: '/public' })).type).to.equal('sub');
            peer.send({ type: 'sub', id: 4, path: '/slow' });
            await g.inside;

            const from = peer.frames.length;
            expect(await peer.reply({ type: 'reauth', id: 5, auth: as({ user: 'mallory' }) })).to.equal({ type: 'reauth', id: 5 });
            const revoked = peer.frames.slice(from).map((frame) => JSON.parse(frame)).filter((frame) => frame.type === 'revoke').map((frame) => frame.path);
            expect(revoked.sort()).to.equal(['/feed/alice', '/public']);

            g.open();
            expect((await answer(peer, 'sub', 4)).statusCode).to.equal(403);

            for (const path of ['/feed/alice', '/public', '/slow']) {
                await srv.publish(path, 'after');
            }

            await wait(50);
            expect(pubs(peer)).to.equal([]);

            // The same user again keeps what it holds; the same user through another strategy does not.
            expect((await peer.reply({ type: 'sub', id: 6, path: '/public' })).type).to.equal('sub');
            expect(await peer.reply({ type: 'reauth', id: 7, auth: as({ user: 'mallory', scope: ['x'] }) })).to.equal({ type: 'reauth', id: 7 });
            await srv.publish('/public', 'kept');
            await until(() => pubs(peer).length === 1);

            const before = peer.frames.length;
            expect(await peer.reply({ type: 'reauth', id: 8, auth: { headers: { 'x-other': 'mallory' } } })).to.equal({ type: 'reauth', id: 8 });
            expect(peer.frames.slice(before).map((frame) => JSON.parse(frame)).filter((frame) => frame.type === 'revoke').map((frame) => frame.path)).to.equal(['/public']);
        });
    });

    describe('users', () => {

        it('refuses a publish or broadcast to a user that is not a non-empty string or a number', async () => {

            const srv = await start({ auth: { type: 'direct', index: true } }, json(), (s) => {

                s.subscription('/inbox', { auth: { index: true } });
            });

            for (const user of [null, '', true, {}, [], Number.NaN, 0]) {
                await expect(srv.publish('/inbox', 'x', { user: user as any }), String(user)).to.reject('Invalid user: must be a non-empty string or a number');
                expect(() => srv.broadcast('x', { user: user as any }), String(user)).to.throw('Invalid user: must be a non-empty string or a number');
            }
        });

        it('indexes numeric users like nes: connection limit, targeted publish, broadcast and replay', async () => {

            const srv = await start({ auth: { type: 'direct', index: true, maxConnectionsPerUser: 1 } }, json(), (s) => {

                s.subscription('/inbox', { auth: { mode: 'optional', index: true }, history: { size: 10, ttl: 60000 } });
            });

            const numeric = await open(srv, { auth: as({ user: 42 }) });
            const second = await Peer.open(url(srv));
            later(() => second.close());
            expect((await second.hello({ auth: as({ user: 42 }) })).statusCode).to.equal(503);

            const anonymous = await open(srv, { pulse: { recovery: true } });
            const sub = await anonymous.reply({ type: 'sub', id: 2, path: '/inbox' });
            expect((await numeric.reply({ type: 'sub', id: 2, path: '/inbox' })).type).to.equal('sub');
            anonymous.close();
            await until(() => srv.pulseStats().sockets === 1);

            await srv.publish('/inbox', 'to 42', { user: 42 });
            await srv.publish('/inbox', 'to "42"', { user: '42' });
            await srv.broadcast('hello 42', { user: 42 });
            await until(() => pubs(numeric).length === 2 && frames(numeric).some((frame) => frame.type === 'update'));
            expect(pubs(numeric).map((pub) => pub.message)).to.equal(['to 42', 'to "42"']);
            expect(frames(numeric).find((frame) => frame.type === 'update').message).to.equal('hello 42');

            // A socket without that user (here, without any user) never gets it on replay.
            const back = await open(srv, { subs: ['/inbox'], pulse: { recovery: true, positions: { '/inbox': sub.pulse.position } } });
            expect(frames(back)[0].pulse.recovered).to.equal({ '/inbox': true });
            await srv.publish('/inbox', 'to all');
            await until(() => pubs(back).length === 1);
            expect(pubs(back).map((pub) => pub.message)).to.equal(['to all']);
        });

        it('targets numeric users on another node', { skip: !redisAvailable }, async () => {

            const brokerPrefix = uniquePrefix();
            const nodes: Hapi.Server[] = [];
            for (let i = 0; i < 2; ++i) {
                nodes.push(await start({ auth: { type: 'direct', index: true }, broker: new RedisBroker({ url: redisUrl, prefix: brokerPrefix }) }, json(), (s) => {

                    s.subscription('/inbox', { auth: { index: true } });
                }));
            }

            const [a, b] = nodes as [Hapi.Server, Hapi.Server];
            const numeric = await open(b, { auth: as({ user: 7 }), subs: ['/inbox'] });
            const other = await open(b, { auth: as({ user: 8 }), subs: ['/inbox'] });
            await a.publish('/inbox', 'to 7', { user: 7 });
            await a.broadcast('hi 7', { user: '7' });
            await until(() => pubs(numeric).length === 1 && frames(numeric).some((frame) => frame.type === 'update'));
            expect(pubs(numeric)[0].message).to.equal('to 7');
            await wait(50);
            expect(frames(other).filter((frame) => frame.type === 'pub' || frame.type === 'update')).to.equal([]);
        });
    });

    describe('maxSubscriptions', () => {

        it('holds under a burst of subs whose onSubscribe is async, and a failed sub frees its slot', async () => {

            const srv = await start({ limits: { maxSubscriptions: 10 } }, () => { }, (s) => {

                s.subscription('/item/{id}', {
                    onSubscribe: async (_socket, _path, params) => {

                        await wait(20);
                        if (params.id === 'fail') {
                            throw Boom.badRequest('refused');
                        }
                    }
                });
            });

            const peer = await open(srv);
            for (let id = 1; id <= 99; ++id) {
                peer.send({ type: 'sub', id, path: `/item/${id}` });
            }

            await until(() => frames(peer).filter((frame) => frame.type === 'sub').length === 99);
            const subs = frames(peer).filter((frame) => frame.type === 'sub');
            expect(subs.filter((frame) => !frame.statusCode).length).to.equal(10);
            expect(subs.filter((frame) => frame.statusCode).map((frame) => frame.payload.message)).to.equal(new Array(89).fill('Too many subscriptions'));
            expect(srv.pulseStats().subscriptions).to.equal(10);

            const small = await start({ limits: { maxSubscriptions: 1 } }, () => { }, (s) => {

                s.subscription('/item/{id}', {
                    onSubscribe: async (_socket, _path, params) => {

                        await wait(5);
                        if (params.id === 'fail') {
                            throw Boom.badRequest('refused');
                        }
                    }
                });
            });

            const one = await open(small);
            expect((await one.reply({ type: 'sub', id: 2, path: '/item/fail' })).statusCode).to.equal(400);
            expect((await one.reply({ type: 'sub', id: 3, path: '/item/1' })).statusCode).to.not.exist();
            expect((await one.reply({ type: 'sub', id: 4, path: '/item/2' })).statusCode).to.equal(429);
        });
    });

    describe('cookies', () => {

        const password = 'a-password-that-is-at-least-32-characters-long!';
        const cookieFor = async (srv: Hapi.Server, user: string): Promise<string> => {

            const res = await srv.inject({ url: '/nes/auth', headers: { authorization: JSON.stringify({ user }) } });
            return (res.headers['set-cookie'] as string[])[0]!.split(';')[0]!;
        };

        it('never matter to token and direct auth, and only the auth cookie matters to cookie auth', async () => {

            const junk = 'other="bad; x=a b; flag';
            const token = await start({ auth: { type: 'token', password, route: 'json' } }, json());
            const res = await token.inject({ url: '/nes/auth', headers: { authorization: JSON.stringify({ user: 'john' }) } });
            const tokenPeer = await Peer.open(url(token), { headers: { cookie: junk } });
            later(() => tokenPeer.close());
            expect((await tokenPeer.hello({ auth: (res.result as any).token })).type).to.equal('hello');

            const direct = await start({ auth: { type: 'direct', route: 'json' } }, json());
            const directPeer = await Peer.open(url(direct), { headers: { cookie: `nes=garbage; ${junk}` } });
            later(() => directPeer.close());
            expect((await directPeer.hello({ auth: as({ user: 'john' }) })).type).to.equal('hello');

            const cookie = await start({ auth: { type: 'cookie', password, iron: Iron.defaults, isSecure: false, route: 'json' } }, json(), (s) => {

                s.route({ method: 'GET', path: '/me', options: { auth: false, state: { parse: false }, handler: (request) => request.auth.credentials } });
            });
            const cookiePeer = await Peer.open(url(cookie), { headers: { cookie: `${junk}; ${await cookieFor(cookie, 'john')}` } });
            later(() => cookiePeer.close());
            expect((await cookiePeer.hello()).type).to.equal('hello');
            expect((await cookiePeer.reply({ type: 'request', id: 2, method: 'GET', path: '/me' })).payload).to.equal({ user: 'john' });

            const badAuthCookie = await Peer.open(url(cookie), { headers: { cookie: 'nes=garbage' } });
            later(() => badAuthCookie.close());
            expect((await badAuthCookie.hello()).payload.message).to.equal('Invalid nes authentication cookie');
        });

        it('let a cookie socket renew past the first cookie\'s ttl with the credentials its reauth carries', async () => {

            const ttl = 400;
            const srv = await start({ auth: { type: 'cookie', password, isSecure: false, route: 'json', ttl } }, json(), (s) => {

                s.route({ method: 'GET', path: '/me', options: { auth: false, handler: (request) => request.auth.credentials } });
            });

            const startedAt = Date.now();
            const peer = await Peer.open(url(srv), { headers: { cookie: await cookieFor(srv, 'john') } });
            later(() => peer.close());
            expect((await peer.hello()).type).to.equal('hello');
            await wait(ttl / 2);
            expect(await peer.reply({ type: 'reauth', id: 2, auth: (await cookieFor(srv, 'john')).slice(4) })).to.equal({ type: 'reauth', id: 2 });
            await wait(ttl - (Date.now() - startedAt) + 50);                        // the first cookie has expired
            expect(await peer.reply({ type: 'reauth', id: 3, auth: (await cookieFor(srv, 'jane')).slice(4) })).to.equal({ type: 'reauth', id: 3 });
            expect((await peer.reply({ type: 'request', id: 4, method: 'GET', path: '/me' })).payload).to.equal({ user: 'jane' });
            expect(peer.closed).to.be.null();
        });
    });

    describe('several nodes', () => {

        it('refuse sealed auth without a password once a broker is given', async () => {

            const broker = { start: () => Promise.resolve(), stop: () => Promise.resolve(), publish: () => Promise.resolve(), broadcast: () => Promise.resolve(), subscribe: () => Promise.resolve(), unsubscribe: () => Promise.resolve(), recover: () => Promise.resolve() };
            for (const type of ['token', 'cookie']) {
                await expect(server({ auth: { type }, broker })).to.reject(`Invalid hapi-pulse configuration: auth.password is required for ${type} auth with a broker (every node must unseal what another sealed)`);
                await server({ auth: { type, password: 'a-password-that-is-at-least-32-characters-long!' }, broker });
                await server({ auth: { type } });
                await server({ auth: { type }, broker: new MemoryBroker() });            // one process: its own password works
            }

            await server({ auth: { type: 'direct' }, broker });
        });
    });

    describe('tunnelled request headers', () => {

        it('take the connection headers from the upgrade request, not from the message', async () => {

            const srv = await start({ auth: false }, () => { }, (s) => {

                s.route({ method: 'GET', path: '/admin', vhost: 'admin.example', handler: () => 'admin' });
                s.route({ method: 'POST', path: '/echo', handler: (request) => ({ host: request.info.host, remote: request.info.remoteAddress, headers: request.headers, payload: request.payload }) });
            });

            const upgrade = { 'x-forwarded-for': '10.0.0.1', cookie: 'session=upgrade' };
            const peer = await Peer.open(url(srv), { headers: upgrade });
            later(() => peer.close());
            await peer.hello();

            const forged = {
                host: 'admin.example', 'x-forwarded-for': '6.6.6.6', 'x-forwarded-host': 'evil.example', 'x-forwarded-proto': 'https',
                forwarded: 'for=6.6.6.6', cookie: 'session=forged', 'content-length': '1', 'transfer-encoding': 'chunked', 'x-real-ip': '6.6.6.6', 'x-app': 'kept'
            };
            expect((await peer.reply({ type: 'request', id: 2, method: 'GET', path: '/admin', headers: forged })).statusCode).to.equal(404);

            const echo = (await peer.reply({ type: 'request', id: 3, method: 'POST', path: '/echo', headers: forged, payload: { a: 1 } })).payload;
            expect(echo.host).to.equal(`127.0.0.1:${srv.info.port}`);
            expect(echo.remote).to.equal('127.0.0.1');
            expect(echo.payload).to.equal({ a: 1 });
            expect(echo.headers['x-forwarded-for']).to.equal('10.0.0.1');
            expect(echo.headers.cookie).to.equal('session=upgrade');
            expect(echo.headers['x-app']).to.equal('kept');
            for (const name of ['x-forwarded-host', 'x-forwarded-proto', 'forwarded', 'transfer-encoding', 'x-real-ip']) {
                expect(echo.headers[name], name).to.not.exist();
            }

            expect(echo.headers['content-length']).to.not.equal('1');
        });

        it('let the application allow a connection header by option', async () => {

            const srv = await start({ auth: false, tunnelHeaders: ['X-Forwarded-For'] }, () => { }, (s) => {

                s.route({ method: 'GET', path: '/echo', handler: (request) => request.headers });
            });

            const peer = await open(srv);
            expect((await peer.reply({ type: 'request', id: 2, method: 'GET', path: '/echo', headers: { 'x-forwarded-for': '6.6.6.6', forwarded: 'for=6.6.6.6' } })).payload).to.include({ 'x-forwarded-for': '6.6.6.6' });
            expect((await peer.reply({ type: 'request', id: 3, method: 'GET', path: '/echo', headers: { forwarded: 'for=6.6.6.6' } })).payload.forwarded).to.not.exist();
        });
    });

    describe('paths that are not well-formed Unicode', () => {

        it('are refused at the edge naming the field, and by server.publish', async () => {

            const srv = await start({}, () => { }, (s) => {

                s.subscription('/r/{id}');
                s.route({ method: 'GET', path: '/r/{id}', handler: () => 'ok' });
            });

            const peer = await open(srv);
            expect(await peer.reply({ type: 'sub', id: 2, path: '/r/\ud800' })).to.equal({ type: 'sub', id: 2, statusCode: 400, payload: { error: 'Bad Request', message: 'Message path must be well-formed Unicode' } });
            expect((await peer.reply({ type: 'unsub', id: 3, path: '/r/\udc00' })).payload.message).to.equal('Message path must be well-formed Unicode');
            expect((await peer.reply({ type: 'request', id: 4, method: 'GET', path: '/r/\udc00' })).payload.message).to.equal('Message path must be well-formed Unicode');
            expect((await peer.reply({ type: 'sub', id: 5, path: '/r/\ud83d\ude00' })).statusCode).to.not.exist();      // a surrogate pair is fine

            const hello = await Peer.open(url(srv));
            later(() => hello.close());
            expect((await hello.hello({ subs: ['/r/1', '/r/\ud800'] })).payload.message).to.equal('Message subs must be well-formed Unicode');
            expect((await hello.closedWith()).code).to.equal(1008);

            expect(() => srv.publish('/r/\ud800', 'x')).to.throw('Subscription path must be well-formed Unicode: /r/\ud800');
        });

        it('never replays an entry of another path', async () => {

            const crossed = new class extends MemoryBroker {

                override async recover(path: string, since: any, history: any): Promise<any> {

                    const recovery = await super.recover(path, since, history);
                    const other = await super.recover('/r/other', null, history);
                    return recovery.recovered ? { ...recovery, entries: [...recovery.entries, { path: '/r/other', message: 'not yours', position: { ...other.position, offset: 99 } }] } : recovery;
                }
            }();

            const srv = await start({ broker: crossed }, () => { }, (s) => {

                s.subscription('/r/{id}', { history: { size: 10, ttl: 60000 } });
            });

            const first = await open(srv, { subs: ['/r/1'], pulse: { recovery: true } });
            const position = frames(first)[0].pulse.positions['/r/1'];
            first.close();
            await until(() => srv.pulseStats().sockets === 0);
            await srv.publish('/r/1', 'yours');

            const back = await open(srv, { subs: ['/r/1'], pulse: { recovery: true, positions: { '/r/1': position } } });
            await until(() => pubs(back).length === 1);
            await wait(30);
            expect(pubs(back).map((pub) => pub.message)).to.equal(['yours']);
        });
    });

    describe('history memory', () => {

        const heapAfterGc = (): number => {

            V8.setFlagsFromString('--expose-gc');
            const gc = Vm.runInNewContext('gc') as () => void;
            gc();
            gc();
            return process.memoryUsage().heapUsed;
        };

        const churn = async (peer: Peer, count: number, from = 0): Promise<void> => {

            for (let i = from; i < from + count; i += 40) {                  // 80 messages: within maxInFlight
                peer.frames.length = 0;
                for (let id = i; id < i + 40; ++id) {
                    peer.send({ type: 'sub', id: `s${id}`, path: `/room/${id}` });
                    peer.send({ type: 'unsub', id: `u${id}`, path: `/room/${id}` });
                }

                await until(() => frames(peer).filter((frame) => frame.type === 'unsub').length === 40);
                expect(frames(peer).filter((frame) => frame.statusCode)).to.equal([]);
            }

            peer.frames.length = 0;
        };

        it('keeps nothing for paths subscribed then left without a publish', { timeout: 30000 }, async () => {

            const broker = new MemoryBroker();
            const srv = await start({ broker }, () => { }, (s) => {

                s.subscription('/room/{id}', { history: { size: 10, ttl: 60000 } });
            });

            const peer = await open(srv, { pulse: { recovery: true } });
            await churn(peer, 1000);                                      // warm up
            const before = heapAfterGc();
            await churn(peer, 5000, 1000);
            const grown = heapAfterGc() - before;
            expect(broker.size).to.equal(0);
            expect(srv.pulseStats()).to.include({ topics: 0, subscriptions: 0 });
            expect(grown).to.be.below(400 * 1024);                           // 5000 paths: about 80 bytes each at most
        });

        it('recovers what was published on a path that had no history when the client subscribed', async () => {

            const srv = await start({}, () => { }, (s) => {

                s.subscription('/room/{id}', { history: { size: 10, ttl: 60000 } });
            });

            const first = await open(srv, { subs: ['/room/1'], pulse: { recovery: true } });
            const position = frames(first)[0].pulse.positions['/room/1'];
            expect(position.offset).to.equal(0);
            first.close();
            await until(() => srv.pulseStats().sockets === 0);
            await srv.publish('/room/1', 'missed');

            const back = await open(srv, { subs: ['/room/1'], pulse: { recovery: true, positions: { '/room/1': position } } });
            expect(frames(back)[0].pulse.recovered).to.equal({ '/room/1': true });
            await until(() => pubs(back).length === 1);
            expect(pubs(back)[0]).to.include({ message: 'missed', position: { epoch: pubs(back)[0].position.epoch, offset: 1 } });

            // A position from before the process (another epoch) is not recovered.
            const stranger = await open(srv, { subs: ['/room/2'], pulse: { recovery: true, positions: { '/room/2': { epoch: 'other~1', offset: 0 } } } });
            expect(frames(stranger)[0].pulse.recovered).to.equal({ '/room/2': false });
        });

        it('caps the number of histories: the least recently published one is dropped', async () => {

            const broker = new MemoryBroker({ maxStreams: 2 });
            const srv = await start({ broker }, () => { }, (s) => {

                s.subscription('/room/{id}', { history: { size: 10, ttl: 60000 } });
            });

            const peer = await open(srv, { subs: ['/room/1'], pulse: { recovery: true } });
            await srv.publish('/room/1', 'one');
            await until(() => pubs(peer).length === 1);
            const position = pubs(peer)[0].position;
            peer.close();
            await until(() => srv.pulseStats().sockets === 0);

            await srv.publish('/room/2', 'two');
            await srv.publish('/room/1', 'one again');                   // most recent: /room/1, then /room/2
            await srv.publish('/room/3', 'three');                       // drops /room/2
            expect(broker.size).to.equal(2);
            await srv.publish('/room/2', 'two again');                   // drops /room/1
            expect(broker.size).to.equal(2);

            const back = await open(srv, { subs: ['/room/1'], pulse: { recovery: true, positions: { '/room/1': position } } });
            expect(frames(back)[0].pulse.recovered).to.equal({ '/room/1': false });
            for (const maxStreams of [0, 1.5]) {
                expect(() => new MemoryBroker({ maxStreams })).to.throw('Invalid MemoryBroker maxStreams');
            }
        });

        it('recovers from a position given before the first publish only when it can vouch for what came since', async () => {

            const broker = new MemoryBroker({ maxStreams: 1 });
            const history = { size: 10, ttl: 60000 };
            const at = (time: number) => ({ epoch: `${broker.epoch}~${Math.floor(time)}`, offset: 0 });

            await broker.publish({ path: '/old', message: 1 }, history);
            await wait(5);
            const afterCreation = at(performance.now());
            expect((await broker.recover('/old', afterCreation, history)).recovered).to.be.false();      // the stream is older than the position
            expect((await broker.recover('/none', at(performance.now() + 60000), history)).recovered).to.be.false();     // from the future

            const quiet = (await broker.recover('/quiet', null, history)).position;
            expect((await broker.recover('/quiet', quiet, history)).recovered).to.be.true();
            await wait(2);
            await broker.publish({ path: '/other', message: 1 }, history);          // the cap drops /old
            expect((await broker.recover('/quiet', quiet, history)).recovered).to.be.false();
        });

        it('stores nothing in Redis for paths subscribed then left without a publish, and still recovers across nodes', { skip: !redisAvailable }, async () => {

            const brokerPrefix = uniquePrefix();
            const nodes: Hapi.Server[] = [];
            for (let i = 0; i < 2; ++i) {
                nodes.push(await start({ broker: new RedisBroker({ url: redisUrl, prefix: brokerPrefix }) }, () => { }, (s) => {

                    s.subscription('/room/{id}', { history: { size: 10, ttl: 60000 } });
                }));
            }

            const [a, b] = nodes as [Hapi.Server, Hapi.Server];
            const peer = await open(b, { pulse: { recovery: true } });
            await churn(peer, 300);

            const admin = createClient({ url: redisUrl });
            await admin.connect();
            later(() => admin.destroy());
            const keys = async (): Promise<string[]> => (await admin.keys(`${brokerPrefix}*`)).map((key) => key.slice(brokerPrefix.length)).sort();
            expect((await keys()).filter((key) => key.startsWith('m:') || key.startsWith('h:'))).to.equal([]);

            const sub = await peer.reply({ type: 'sub', id: 2, path: '/room/quiet' });
            expect(sub.pulse.position.offset).to.equal(0);
            peer.close();
            await a.publish('/room/quiet', 'missed');
            expect(await keys()).to.include(['h:/room/quiet', 'm:/room/quiet']);

            const back = await open(a, { subs: ['/room/quiet'], pulse: { recovery: true, positions: { '/room/quiet': sub.pulse.position } } });
            expect(frames(back)[0].pulse.recovered).to.equal({ '/room/quiet': true });
            await until(() => pubs(back).length === 1);
            expect(pubs(back)[0].message).to.equal('missed');
        });
    });
});
