// What a hostile review found (issue 12), each defect reproduced through the public API over real
// sockets: raw protocol peers against one node, and two nodes over the real Redis where nodes matter.

import { randomBytes } from 'node:crypto';

import * as Boom from '@hapi/boom';
import * as Code from '@hapi/code';
import type * as Hapi from '@hapi/hapi';
import * as Lab from '@hapi/lab';
import { createClient } from '@redis/client';

import { CloseCode } from '../lib';
import { RedisBroker } from '../lib/brokers/redis';
import { Peer, redisAvailable, redisUrl, server, skipWithoutRedis, teardown, url, until, wait } from './helpers';

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
        const admin = createClient({ url: redisUrl });
        await admin.connect();
        const keys: string[] = [];
        for await (const batch of admin.scanIterator({ MATCH: `${prefix}*`, COUNT: 1000 })) {
            keys.push(...batch);
        }

        if (keys.length) {
            await admin.del(keys);
        }

        admin.destroy();
    }
});

// Credentials are the JSON in the authorization header. `control` decides what verify() does.
interface Control {
    revoked: Set<unknown>;
    hang: Set<unknown>;
    delay: number;
    verified: number;
}

const control = (): Control => ({ revoked: new Set(), hang: new Set(), delay: 0, verified: 0 });

const json = (ctl: Control = control()) => (srv: Hapi.Server): void => {

    srv.auth.scheme('json', () => ({
        authenticate: (request: Hapi.Request, h: Hapi.ResponseToolkit) => {

            const header = request.headers.authorization;
            if (!header) {
                throw Boom.unauthorized(null, 'Json');
            }

            return h.authenticated({ credentials: JSON.parse(header as string) });
        },
        verify: async (auth: { credentials: { user: unknown } }) => {

            ++ctl.verified;
            if (ctl.hang.has(auth.credentials.user)) {
                await new Promise(() => { });
            }

            if (ctl.delay) {
                await wait(ctl.delay);
            }

            if (ctl.revoked.has(auth.credentials.user)) {
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

    const peer = await Peer.open(url(srv));
    later(() => peer.close());
    const reply = await peer.hello(hello);
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

        for (const heartbeat of [false, { interval: 100, timeout: 50 }] as const) {

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
                const srv = await start({ auth: { type: 'direct', minAuthVerifyInterval: 100 }, heartbeat }, json(ctl));
                const idle = ponging(await open(srv, { auth: as({ user: 'idle' }) }));
                const kept = ponging(await open(srv, { auth: as({ user: 'kept' }) }));
                await wait(150);
                ctl.revoked.add('idle');
                const revokedAt = Date.now();
                expect(await idle.closedWith()).to.equal({ code: CloseCode.authExpired, reason: 'Credential verification failed' });
                expect(Date.now() - revokedAt).to.be.below(300);
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
            expect(Date.now() - revokedAt).to.be.below(interval + 60 + 250);      // one interval and one verify latency, plus slack
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
            const srv = await start({ auth: { type: 'direct' } }, json(), (s) => {

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

            // The same user again keeps what it holds.
            expect((await peer.reply({ type: 'sub', id: 6, path: '/public' })).type).to.equal('sub');
            expect(await peer.reply({ type: 'reauth', id: 7, auth: as({ user: 'mallory', scope: ['x'] }) })).to.equal({ type: 'reauth', id: 7 });
            await srv.publish('/public', 'kept');
            await until(() => pubs(peer).length === 1);
        });
    });
});
