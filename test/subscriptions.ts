// Subscriptions through the public API: option validation, subscription auth, the per-path user index,
// filters that fail, onUnsubscribe errors, and replay through user targeting and filters.

import * as Code from '@hapi/code';
import type * as Hapi from '@hapi/hapi';
import * as Lab from '@hapi/lab';

import { MemoryBroker } from '../lib';
import { jsonAuth, Peer, server, url, until, wait } from './helpers';

const { expect } = Code;
const lab = Lab.script();
export { lab };
const { describe, it } = lab;

const pubs = (peer: Peer): any[] => peer.frames.map((frame) => JSON.parse(frame)).filter((message) => message.type === 'pub');

const authed = (options: Record<string, unknown> = {}) => server({ auth: { type: 'direct', route: { strategy: 'json', mode: 'optional' } }, ...options }, 'pulse', jsonAuth);

const connect = async (srv: Hapi.Server, credentials?: Record<string, unknown>, extra: Record<string, unknown> = {}): Promise<Peer> => {

    const peer = await Peer.open(url(srv));
    const reply = await peer.hello({ ...(credentials ? { auth: { headers: { authorization: JSON.stringify(credentials) } } } : {}), ...extra });
    expect(reply.type).to.equal('hello');
    expect(reply.statusCode).to.not.exist();
    return peer;
};

describe('subscriptions', () => {

    it('validates subscription options', async () => {

        const srv = await server();
        srv.subscription('/taken');

        const invalid: [unknown, unknown, string][] = [
            [5, {}, 'Subscription path must be a string starting with /'],
            ['taken', {}, 'Subscription path must be a string starting with /'],
            ['/taken', {}, 'Subscription already exists: /taken'],
            ['/a', null, 'Invalid subscription options: /a'],
            ['/a', { other: 1 }, 'Invalid subscription options: /a ("other" is not allowed)'],
            ['/a', { filter: 'yes' }, 'Invalid subscription options: /a ("filter" must be a function)'],
            ['/a', { auth: null }, 'Invalid subscription options: /a (auth must be an object or false)'],
            ['/a', { auth: true }, 'Invalid subscription options: /a (auth must be an object or false)'],
            ['/a', { auth: 'required' }, 'Invalid subscription options: /a (auth must be an object or false)'],
            ['/a', { auth: ['user'] }, 'Invalid subscription options: /a (auth must be an object or false)'],
            ['/a', { auth: { mode: 'try' } }, 'Invalid subscription options: /a (auth.mode must be required or optional)'],
            ['/a', { auth: { entity: 'robot' } }, 'Invalid subscription options: /a (auth.entity must be user, app or any)'],
            ['/a', { auth: { scope: [] } }, 'Invalid subscription options: /a (auth.scope must be strings)'],
            ['/a', { auth: { scope: ['a', 1] } }, 'Invalid subscription options: /a (auth.scope must be strings)'],
            ['/a', { history: { size: 0 } }, 'Invalid subscription options: /a (history.size and history.ttl must be positive integers)'],
            ['/a', { history: { size: 1.5 } }, 'Invalid subscription options: /a (history.size and history.ttl must be positive integers)'],
            ['/a', { history: { ttl: 'long' } }, 'Invalid subscription options: /a (history.size and history.ttl must be positive integers)'],
            ['/a', { history: { ttl: -1 } }, 'Invalid subscription options: /a (history.size and history.ttl must be positive integers)']
        ];

        for (const [path, options, message] of invalid) {
            expect(() => srv.subscription(path as string, options as any), message).to.throw(message);
        }

        srv.subscription('/a', { auth: { scope: 'one' }, history: { size: 1, ttl: 1 } });
        expect(() => srv.subscription('/a')).to.throw('Subscription already exists: /a');
    });

    describe('auth', () => {

        it('applies mode, scope (with and without params) and entity', async () => {

            const srv = await authed();
            srv.subscription('/optional', { auth: { mode: 'optional' } });
            srv.subscription('/required', { auth: {} });
            srv.subscription('/admin', { auth: { scope: ['admin', 'root'] } });
            srv.subscription('/team/{id}', { auth: { scope: 'team-{params.id}' } });
            srv.subscription('/users', { auth: { entity: 'user' } });
            srv.subscription('/apps', { auth: { entity: 'app' } });
            await srv.start();

            const sub = async (peer: Peer, path: string): Promise<number | undefined> => (await peer.reply({ type: 'sub', id: path, path })).statusCode;

            const anonymous = await connect(srv);
            expect(await sub(anonymous, '/optional')).to.be.undefined();
            expect(await sub(anonymous, '/required')).to.equal(401);

            const admin = await connect(srv, { user: 'ann', scope: 'admin' });        // a single scope string
            expect(await sub(admin, '/admin')).to.be.undefined();
            expect(await sub(admin, '/users')).to.be.undefined();
            expect(await sub(admin, '/apps')).to.equal(403);
            const denied = await admin.reply({ type: 'sub', id: 9, path: '/team/1' });
            expect(denied.statusCode).to.equal(403);
            expect(denied.payload.message).to.equal('Insufficient scope to subscribe, expected any of: team-1');

            const app = await connect(srv, { scope: ['team-1'] });
            expect(await sub(app, '/team/1')).to.be.undefined();
            expect(await sub(app, '/team/2')).to.equal(403);
            expect(await sub(app, '/admin')).to.equal(403);
            expect(await sub(app, '/apps')).to.be.undefined();
            expect(await sub(app, '/users')).to.equal(403);

            const unscoped = await connect(srv, { user: 'bob', scope: 7 });
            expect(await sub(unscoped, '/admin')).to.equal(403);

            await srv.publish('/apps', 'to apps');
            await until(() => pubs(app).length === 1);
            expect(pubs(admin)).to.equal([]);

            for (const peer of [anonymous, admin, app, unscoped]) {
                peer.close();
            }

            await srv.stop();
        });

        it('indexes subscribers by user, leaving out sockets without one', async () => {

            const srv = await authed({ auth: { type: 'direct', index: true, route: { strategy: 'json', mode: 'optional' } } });
            const visits: string[] = [];
            srv.subscription('/inbox', { auth: { mode: 'optional', index: true } });
            await srv.start();

            const john = await connect(srv, { user: 'john' }, { subs: ['/inbox'] });
            const app = await connect(srv, { id: 'service' }, { subs: ['/inbox'] });
            const anonymous = await connect(srv, undefined, { subs: ['/inbox'] });
            expect(srv.pulseStats()).to.include({ users: 1, subscriptions: 3 });

            await srv.publish('/inbox', 'for john', { user: 'john' });
            await srv.publish('/inbox', 'for all');
            await until(() => pubs(john).length === 2 && pubs(app).length === 1 && pubs(anonymous).length === 1);
            expect(pubs(app)[0].message).to.equal('for all');

            await srv.eachSocket((socket) => visits.push(socket.auth.credentials?.user ?? 'none'), { subscription: '/inbox', user: 'john' });
            expect(visits).to.equal(['john']);

            await srv.broadcast('hi john', { user: 'john' });
            const updates = (peer: Peer): unknown[] => peer.frames.map((frame) => JSON.parse(frame)).filter((message) => message.type === 'update');
            await until(() => updates(john).length === 1);
            expect(updates(john)).to.equal([{ type: 'update', message: 'hi john' }]);
            expect(updates(app).length + updates(anonymous).length).to.equal(0);

            await anonymous.reply({ type: 'unsub', id: 2, path: '/inbox' });
            await app.reply({ type: 'unsub', id: 2, path: '/inbox' });
            expect(srv.pulseStats()).to.include({ subscriptions: 1 });
            await srv.publish('/inbox', 'again');
            await until(() => pubs(john).length === 3);
            await wait(20);
            expect(pubs(app).length + pubs(anonymous).length).to.equal(2);

            for (const peer of [john, app, anonymous]) {
                peer.close();
            }

            await srv.stop();
        });
    });

    describe('filters and hooks', () => {

        it('skips a message whose filter throws or rejects, and logs the error', async () => {

            const srv = await server();
            const logs: { tags: string[]; message: string }[] = [];
            srv.events.on('log', (event) => logs.push({ tags: event.tags, message: `${(event.data as any).path} ${(event.data as any).error.message}` }));
            srv.subscription('/sync', {
                filter: (_path, message) => {

                    if (message === 'bad') {
                        throw new Error('sync failure');
                    }

                    return true;
                }
            });
            srv.subscription('/async', {
                filter: async (_path, message) => {

                    await wait(1);
                    if (message === 'bad') {
                        throw new Error('async failure');
                    }

                    return true;
                }
            });
            await srv.start();

            const peer = await connect(srv, undefined, { subs: ['/sync', '/async'] });
            for (const path of ['/sync', '/async']) {
                await srv.publish(path, 'bad');
                await srv.publish(path, 'good');
            }

            await until(() => pubs(peer).length === 2);
            expect(pubs(peer).map((pub) => `${pub.path} ${pub.message}`)).to.equal(['/sync good', '/async good']);
            expect(logs).to.equal([{ tags: ['pulse', 'filter', 'error'], message: '/sync sync failure' }, { tags: ['pulse', 'filter', 'error'], message: '/async async failure' }]);
            peer.close();
            await srv.stop();
        });

        it('sends the message itself for a truthy decision without override', async () => {

            const srv = await server();
            srv.subscription('/news', { filter: () => ({ note: 'kept' }) as any });
            await srv.start();

            const peer = await connect(srv, undefined, { subs: ['/news'] });
            await srv.publish('/news', 'original');
            await until(() => pubs(peer).length === 1);
            expect(pubs(peer)[0]).to.equal({ type: 'pub', path: '/news', message: 'original' });
            peer.close();
            await srv.stop();
        });

        it('delivers to the others when a socket closes while its async filter runs', async () => {

            let gone!: () => void;
            const closing = new Promise<void>((resolve) => {

                gone = resolve;
            });

            const srv = await server();
            srv.subscription('/news', {
                filter: async (_path, message, { socket }) => {

                    if (socket.app.leaving) {
                        socket.disconnect();
                        await closing;
                    }

                    return { override: `${message}!` };
                }
            });
            const peers: Peer[] = [];
            srv.route({ method: 'POST', path: '/leave', handler: (request) => {

                request.socket!.app.leaving = true;
                return null;
            } });
            await srv.start();

            const staying = await connect(srv, undefined, { subs: ['/news'] });
            const leaving = await connect(srv, undefined, { subs: ['/news'] });
            peers.push(staying, leaving);
            await leaving.request({ type: 'request', id: 2, method: 'POST', path: '/leave' });

            const published = srv.publish('/news', 'hello');
            await leaving.closedWith();
            await until(() => srv.pulseStats().sockets === 1);
            gone();
            await published;
            await until(() => pubs(staying).length === 1);
            expect(pubs(staying)[0].message).to.equal('hello!');
            expect(pubs(leaving)).to.equal([]);
            staying.close();
            await srv.stop();
        });

        it('logs onUnsubscribe errors and still unsubscribes', async () => {

            const srv = await server();
            const logs: string[][] = [];
            srv.events.on('log', (event) => logs.push(event.tags));
            srv.subscription('/news', {
                onUnsubscribe: () => {

                    throw new Error('hook failure');
                }
            });
            await srv.start();

            const peer = await connect(srv, undefined, { subs: ['/news'] });
            expect(await peer.request({ type: 'unsub', id: 2, path: '/news' })).to.equal({ type: 'unsub', id: 2 });
            expect(logs).to.equal([['pulse', 'onUnsubscribe', 'error']]);
            expect(srv.pulseStats().subscriptions).to.equal(0);
            peer.close();
            await srv.stop();
        });
    });

    describe('replay', () => {

        it('replays through user targeting and the filter, skipping what fails', async () => {

            const srv = await authed({ auth: { type: 'direct', index: true, route: { strategy: 'json', mode: 'optional' } } });
            const logs: string[][] = [];
            srv.events.on('log', (event) => logs.push(event.tags));
            srv.subscription('/inbox', {
                auth: { index: true },
                history: { size: 10, ttl: 60000 },
                filter: (_path, message) => {

                    if (message === 'bad') {
                        throw new Error('filter failure');
                    }

                    return true;
                }
            });
            await srv.start();

            const first = await connect(srv, { user: 'john' }, { subs: ['/inbox'], pulse: { recovery: true } });
            const since = JSON.parse(first.frames[0]!).pulse.positions['/inbox'];
            first.close();
            await until(() => srv.pulseStats().sockets === 0);

            await srv.publish('/inbox', 'for jane', { user: 'jane' });
            await srv.publish('/inbox', 'for john', { user: 'john' });
            await srv.publish('/inbox', 'bad');
            await srv.publish('/inbox', 'for all');

            const back = await connect(srv, { user: 'john' }, { subs: ['/inbox'], pulse: { recovery: true, positions: { '/inbox': since } } });
            expect(JSON.parse(back.frames[0]!).pulse.recovered).to.equal({ '/inbox': true });
            await until(() => pubs(back).length === 2);
            await wait(20);
            expect(pubs(back).map((pub) => pub.message)).to.equal(['for john', 'for all']);
            expect(logs.filter((tags) => tags.includes('filter'))).to.equal([['pulse', 'filter', 'error']]);
            back.close();
            await srv.stop();
        });
    });
});

describe('filters returning thenables', () => {

    it('waits for any thenable, not only native promises', async () => {

        const srv = await server();
        srv.subscription('/t', {
            filter: (_path, message: string) => ({ then: (resolve: (value: boolean) => void) => resolve(message !== 'hidden') }) as unknown as Promise<boolean>
        });
        await srv.start();

        const peer = await Peer.open(url(srv));
        await peer.hello({ subs: ['/t'] });
        await srv.publish('/t', 'hidden');
        await srv.publish('/t', 'shown');
        await until(() => peer.frames.length === 2);
        await wait(20);
        expect(peer.frames.slice(1).map((frame) => JSON.parse(frame).message)).to.equal(['shown']);
        peer.close();
        await srv.stop();
    });
});

describe('subscription lifecycle with the broker', () => {

    // The memory broker, slow (or refusing) to take a new path.
    const slowBroker = (delay: number, fail = false) => {

        const confirmed: number[] = [];
        const broker = new class extends MemoryBroker {

            override async subscribe(): Promise<void> {

                await wait(delay);
                if (fail) {
                    throw new Error('broker refused the path');
                }

                confirmed.push(Date.now());
            }
        }();

        return { broker, confirmed };
    };

    it('answers every concurrent sub of a new path only once the broker has it', async () => {

        const { broker, confirmed } = slowBroker(80);
        const srv = await server({ broker });
        srv.subscription('/new');
        await srv.start();

        const first = await Peer.open(url(srv));
        const second = await Peer.open(url(srv));
        await first.hello();
        await second.hello();
        const replies = await Promise.all([first, second].map(async (peer) => {

            await peer.reply({ type: 'sub', id: 2, path: '/new' });
            return Date.now();
        }));

        expect(confirmed).to.have.length(1);
        expect(Math.min(...replies)).to.be.at.least(confirmed[0]!);

        first.close();
        second.close();
        await srv.stop();
    });

    it('fails the sub and leaves nothing behind when the broker refuses the path', async () => {

        const { broker } = slowBroker(10, true);
        const srv = await server({ broker });
        srv.subscription('/refused');
        await srv.start();

        const peer = await Peer.open(url(srv));
        await peer.hello();
        const reply = await peer.reply({ type: 'sub', id: 2, path: '/refused' });
        expect(reply.statusCode).to.equal(500);
        expect(srv.pulseStats()).to.include({ topics: 0, subscriptions: 0 });

        peer.close();
        await srv.stop();
    });

    it('revokes the subscriptions that new credentials no longer allow after a reauth', async () => {

        const srv = await server({ auth: { type: 'direct' } }, 'pulse', (hapi) => {

            hapi.auth.scheme('header', () => ({
                authenticate: (request, h) => h.authenticated({ credentials: { user: request.headers['x-user'] as string, scope: [`room-${request.headers['x-room']}`] } })
            }));
            hapi.auth.strategy('header', 'header');
            hapi.auth.default('header');
        });
        srv.subscription('/room/{id}', { auth: { scope: ['room-{params.id}'] } });
        await srv.start();

        const peer = await Peer.open(url(srv));
        await peer.hello({ auth: { headers: { 'x-user': 'ann', 'x-room': '1' } }, subs: ['/room/1'] });
        expect(await peer.reply({ type: 'reauth', id: 2, auth: { headers: { 'x-user': 'ann', 'x-room': '2' } } })).to.equal({ type: 'reauth', id: 2 });
        expect(peer.frames.map((frame) => JSON.parse(frame))).to.contain({ type: 'revoke', path: '/room/1' });
        await srv.publish('/room/1', 'not any more');
        await wait(20);
        expect(peer.frames.join()).to.not.contain('not any more');
        expect(srv.pulseStats().subscriptions).to.equal(0);

        peer.close();
        await srv.stop();
    });
});

describe('publish engine invariants', () => {

    it('never touches the subscribers of another path of the same pattern', async () => {

        const seen: string[] = [];
        const srv = await server();
        srv.subscription('/item/{id}', {
            onSubscribe: (socket, path) => {

                socket.app.name = path;
            },
            filter: (path, _message, { socket }) => {

                seen.push(`${path} -> ${(socket.app as { name: string }).name}`);
                return true;
            }
        });
        await srv.start();

        const peers = await Promise.all(['/item/1', '/item/2', '/item/3'].map(async (path) => {

            const peer = await Peer.open(url(srv));
            await peer.hello({ subs: [path] });
            return peer;
        }));

        await srv.publish('/item/2', 'only two');
        expect(seen).to.equal(['/item/2 -> /item/2']);                       // one filter call: the one recipient
        await until(() => peers[1]!.frames.length === 2);
        await wait(20);
        expect(peers[0]!.frames).to.have.length(1);
        expect(peers[2]!.frames).to.have.length(1);

        for (const peer of peers) {
            peer.close();
        }

        await srv.stop();
    });

    it('keeps the order of a burst on every socket', async () => {

        const srv = await server();
        srv.subscription('/burst');
        await srv.start();

        const peers = await Promise.all([1, 2, 3].map(async () => {

            const peer = await Peer.open(url(srv));
            await peer.hello({ subs: ['/burst'] });
            return peer;
        }));

        for (let i = 0; i < 2000; ++i) {
            srv.publish('/burst', i);                                       // one tight loop, not awaited
        }

        for (const peer of peers) {
            await until(() => peer.frames.length === 2001, 5000);
            expect(peer.frames.slice(1).map((frame) => JSON.parse(frame).message)).to.equal(Array.from({ length: 2000 }, (_, i) => i));
            peer.close();
        }

        await srv.stop();
    });
});
