// Server-side subscriptions on one node (in-process broker), over real sockets: our client, the stock nes
// client and raw peers; persistent memberships joined at hello, recovery, queries, multi-path publish and limits.

import * as Boom from '@hapi/boom';
import * as Code from '@hapi/code';
import type * as Hapi from '@hapi/hapi';
import * as Lab from '@hapi/lab';

import { Client } from '../lib/client';
import type { Broker, BrokerSink } from '../lib/index';
import { CloseCode, MemoryBroker } from '../lib/index';
import { Peer, server, teardown, url, until, wait } from './helpers';
import { basic, clients, header } from './groups-clients';

const { expect } = Code;
const lab = Lab.script();
export { lab };
const { describe, it } = lab;
const defer = teardown(lab);


const start = async (options: Record<string, unknown> = {}, subscriptions?: (srv: Hapi.Server) => void): Promise<Hapi.Server & { logs: { tags: string[]; data: any }[] }> => {

    const srv = await server({ auth: { type: 'direct', index: true }, ...options }, 'pulse', basic) as Hapi.Server & { logs: { tags: string[]; data: any }[] };
    srv.logs = [];
    srv.events.on('log', (event) => srv.logs.push({ tags: event.tags, data: event.data }));
    if (subscriptions) {
        subscriptions(srv);
    }
    else {
        srv.subscription('/room/{id}');
    }

    await srv.start();
    defer(() => srv.stop({ timeout: 100 }));
    return srv;
};

const { pulseClient, nesClient } = clients(defer);

const peer = async (srv: Hapi.Server, user: string, pulse?: Record<string, unknown>): Promise<Peer & { hello0: any }> => {

    const raw = await Peer.open(url(srv)) as Peer & { hello0: any };
    defer(() => raw.close());
    raw.hello0 = await raw.hello({ auth: header(user), ...(pulse ? { pulse } : {}) });
    return raw;
};

const frames = (raw: Peer, type?: string): any[] => raw.frames.map((frame) => JSON.parse(frame)).filter((frame) => !type || frame.type === type);

describe('server-side subscriptions', () => {

    it('subscribes every socket of a user: our client is told (join, pubs, revoke), a stock nes client gets the pubs and the revoke', async () => {

        const unsubscribed: string[] = [];
        const subscribed: string[] = [];
        const srv = await start({}, (srv) => srv.subscription('/room/{id}', {
            onSubscribe: (socket, path, params) => void subscribed.push(`${path}:${params.id}`),
            onUnsubscribe: (socket, path) => void unsubscribed.push(path)
        }));

        const ours = await pulseClient(srv, 'john');
        const stock = await peer(srv, 'john');
        const other = await pulseClient(srv, 'jane');
        expect(ours.joinedPaths()).to.equal([]);

        await srv.subscribeUser('john', '/room/1');
        expect(subscribed).to.equal(['/room/1:1', '/room/1:1']);
        await until(() => ours.seen.length === 1);
        expect(ours.seen[0]).to.equal({ message: undefined, flags: { joined: true, path: '/room/1', params: { id: '1' } } });
        expect(ours.joinedPaths()).to.equal(['/room/1']);
        expect(ours.subscriptions()).to.equal([]);                          // not the application's own

        await srv.publish('/room/1', 'hi');
        await until(() => ours.seen.length === 2 && frames(stock, 'pub').length === 1);
        expect(ours.seen[1]).to.equal({ message: 'hi', flags: { path: '/room/1', params: { id: '1' } } });
        expect(frames(stock).slice(1)).to.equal([{ type: 'pub', path: '/room/1', message: 'hi' }]);          // no join: not negotiated
        expect(other.seen).to.equal([]);

        await srv.unsubscribeUser('john', '/room/1', { message: 'bye' });
        await until(() => ours.seen.length === 3 && frames(stock, 'revoke').length === 1);
        expect(ours.seen[2]).to.equal({ message: 'bye', flags: { revoked: true, path: '/room/1', params: { id: '1' } } });
        expect(frames(stock, 'revoke')).to.equal([{ type: 'revoke', path: '/room/1', message: 'bye' }]);
        expect(ours.joinedPaths()).to.equal([]);
        expect(unsubscribed).to.equal(['/room/1', '/room/1']);

        await srv.publish('/room/1', 'gone');
        await wait(50);
        expect(ours.seen.length).to.equal(3);
        expect(frames(stock, 'pub').length).to.equal(1);
        expect(srv.pulseStats().subscriptions).to.equal(0);
    });

    it('reaches the stock nes client: pubs of a path it did not subscribe are dropped, its own subscription gets them and the revoke', async () => {

        const srv = await start();
        const stock = await nesClient(srv, 'john');
        const got: [unknown, unknown][] = [];
        await stock.subscribe('/room/2', (message, flags) => got.push([message, flags]));

        await srv.subscribeUser('john', ['/room/1', '/room/2']);
        await srv.publish('/room/1', 'not mine');
        await srv.publish('/room/2', 'mine');
        await until(() => got.length === 1);
        expect(got[0]).to.equal(['mine', {}]);

        await srv.unsubscribeUser('john', '/room/2', { message: 'closed' });
        await until(() => got.length === 2);
        expect(got[1]).to.equal(['closed', { revoked: true }]);
        expect(stock.subscriptions()).to.equal([]);
    });

    it('negotiates the groups extension in hello and announces each server-side subscription with a join (and its position)', async () => {

        const srv = await start({}, (srv) => {

            srv.subscription('/room/{id}', { history: { size: 10, ttl: 60000 } });
            srv.subscription('/plain');
        });

        const raw = await peer(srv, 'john', { groups: true, recovery: true });
        expect(raw.hello0.pulse).to.equal({ recovery: true, expiry: false, groups: true, joined: [] });
        const without = await peer(srv, 'john', { recovery: true });
        expect(without.hello0.pulse).to.equal({ recovery: true, expiry: false });

        await srv.subscribeUser('john', ['/room/1', '/plain']);
        await until(() => frames(raw, 'join').length === 2);
        const [room, plain] = frames(raw, 'join');
        expect(room).to.equal({ type: 'join', path: '/room/1', pulse: { position: room.pulse.position } });
        expect(room.pulse.position.offset).to.equal(0);
        expect(plain).to.equal({ type: 'join', path: '/plain' });
        expect(frames(without, 'join')).to.equal([]);

        await srv.subscribeUser('john', '/room/1');                          // already held: nothing new
        await wait(30);
        expect(frames(raw, 'join').length).to.equal(2);
    });

    it('subscribes and unsubscribes one socket by id', async () => {

        const srv = await start();
        const first = await pulseClient(srv, 'john');
        const second = await pulseClient(srv, 'john');

        await srv.subscribeSocket(first.id!, ['/room/1', '/room/2']);
        await srv.subscribeSocket('no-such-socket', '/room/1');             // on no node: nothing
        await srv.publish('/room/2', 'x');
        await until(() => first.seen.length === 3);
        expect(first.seen.map(({ message, flags }) => [message, flags.path])).to.equal([[undefined, '/room/1'], [undefined, '/room/2'], ['x', '/room/2']]);
        expect(second.seen).to.equal([]);

        await srv.unsubscribeSocket(first.id!, '/room/2');
        await until(() => first.seen.length === 4);
        expect(first.seen[3]!.flags.revoked).to.be.true();
        expect(first.seen[3]!.message).to.be.undefined();
        expect(first.joinedPaths()).to.equal(['/room/1']);

        await srv.unsubscribeSocket(first.id!, ['/room/3', '/room/1'], { message: 'out' });     // /room/3 not held: skipped
        await until(() => first.seen.length === 5);
        expect(first.seen[4]).to.equal({ message: 'out', flags: { revoked: true, path: '/room/1', params: { id: '1' } } });
    });

    it('applies the route: a filter runs, onSubscribe refusing or auth failing leaves that socket out (logged)', async () => {

        const srv = await start({}, (srv) => {

            srv.subscription('/room/{id}', {
                filter: (_path, message, { credentials }) => message !== `not for ${credentials!.user}`,
                onSubscribe: (socket) => {

                    if ((socket.auth.credentials as any).user === 'jim') {
                        throw new Error('no jim');
                    }
                }
            });
            srv.subscription('/admin', { auth: { scope: 'admin' } });
        });

        const jim = await pulseClient(srv, 'jim');
        const john = await pulseClient(srv, 'john');
        await srv.subscribeSocket(jim.id!, '/room/1');
        await srv.subscribeSocket(john.id!, ['/room/1', '/admin']);
        await srv.publish('/room/1', 'not for john');
        await srv.publish('/room/1', 'for all');
        await until(() => john.seen.length === 2);
        expect(john.seen.map(({ message }) => message)).to.equal([undefined, 'for all']);
        expect(jim.seen).to.equal([]);
        const errors = srv.logs.filter(({ tags }) => tags.includes('subscribe') && tags.includes('error'));
        expect(errors.map(({ data }) => [data.path, data.error.message])).to.equal([['/room/1', 'no jim'], ['/admin', 'Insufficient scope to subscribe, expected any of: admin']]);
    });

    it('refuses bad arguments with clear errors', async () => {

        const srv = await start();
        await expect(srv.subscribeUser('', '/room/1')).to.reject('Invalid user: must be a non-empty string or a number');
        await expect(srv.subscribeUser('john', '/nowhere')).to.reject('Subscription not found: /nowhere');
        await expect(srv.subscribeUser('john', [])).to.reject('Invalid paths: a path or a non-empty array of paths');
        await expect(srv.subscribeUser('john', 5 as any)).to.reject('Invalid paths: a path or a non-empty array of paths');
        await expect(srv.subscribeUser('john', ['/room/1?x=1'])).to.reject('Invalid subscription path: /room/1?x=1');
        await expect(srv.subscribeUser('john', [7 as any])).to.reject('Invalid subscription path: 7');
        await expect(srv.subscribeUser('john', '/room/1', { ttl: 10 })).to.reject(/Invalid options/);
        await expect(srv.subscribeUser('john', '/room/1', { persist: 'yes' as any })).to.reject(/Invalid options/);
        await expect(srv.subscribeUser('john', '/room/1', { persist: true, ttl: 0 })).to.reject(/Invalid options/);
        await expect(srv.subscribeUser('john', '/room/1', { persist: true, ttl: 1.5 })).to.reject(/Invalid options/);
        await expect(srv.subscribeUser('john', '/room/\ud800')).to.reject('Invalid subscription path: /room/\ud800');
        await expect(srv.subscribeUser('john', '/room/' + 'x'.repeat(1024))).to.reject(/^Invalid subscription path/);
        await expect(srv.unsubscribeSocket(5 as any, '/room/1')).to.reject('Invalid socket id');
        await expect(srv.subscribeSocket('', '/room/1')).to.reject('Invalid socket id');
        await expect(srv.groupMembers('room')).to.reject('Invalid subscription path: room');
        await expect(srv.userGroups(0)).to.reject('Invalid user: must be a non-empty string or a number');

        const plain = await server();
        plain.subscription('/room/{id}');
        await expect(plain.subscribeUser('john', '/room/1')).to.reject('Socket auth indexing is disabled');
        await plain.start();
        defer(() => plain.stop());
        const anonymous = await Peer.open(url(plain));
        defer(() => anonymous.close());
        expect((await anonymous.hello({ pulse: { groups: true } })).pulse).to.equal({ recovery: false, expiry: false, groups: true, joined: [] });

        const { groups: _, ...rest } = new MemoryBroker() as any;
        const bare: Broker = Object.assign(Object.create(MemoryBroker.prototype), rest);
        const without = await server({ broker: bare });
        without.subscription('/room/{id}');
        await expect(without.subscribeSocket('1', '/room/1')).to.reject('The broker does not support server-side subscriptions');
        await without.start();
        defer(() => without.stop());
        const bareSocket = await Peer.open(url(without));
        defer(() => bareSocket.close());
        expect((await bareSocket.hello({ pulse: { groups: true } })).pulse.joined).to.equal([]);
    });
});

describe('persistent memberships', () => {

    it('a user\'s later sockets join its groups at hello; queries list members and paths; unsubscribe ends the membership', async () => {

        const srv = await start();
        await srv.subscribeUser('john', ['/room/1', '/room/2'], { persist: true });
        await srv.subscribeUser(7, '/room/1', { persist: true });
        await srv.subscribeUser('jane', '/room/3');                          // not recorded: no socket, nothing

        expect((await srv.groupMembers('/room/1')).sort()).to.equal(['7', 'john']);
        expect(await srv.groupMembers('/room/3')).to.equal([]);
        expect((await srv.userGroups('john')).sort()).to.equal(['/room/1', '/room/2']);
        expect(await srv.userGroups('jane')).to.equal([]);

        const raw = await peer(srv, 'john', { groups: true });
        expect(raw.hello0.pulse.joined).to.equal(['/room/1', '/room/2']);
        const ours = await pulseClient(srv, 'john');
        expect(ours.joinedPaths()).to.equal(['/room/1', '/room/2']);
        const stock = await nesClient(srv, 'john');
        const got: unknown[] = [];
        await stock.subscribe('/room/1', (message) => got.push(message));

        await srv.publish('/room/2', 'two');
        await srv.publish('/room/1', 'one');
        await until(() => ours.seen.length === 2 && got.length === 1 && frames(raw, 'pub').length === 2);
        expect(ours.seen.map(({ message, flags }) => [message, flags.path])).to.equal([['two', '/room/2'], ['one', '/room/1']]);

        await srv.unsubscribeUser('john', '/room/1');
        expect(await srv.userGroups('john')).to.equal(['/room/2']);
        expect(await srv.groupMembers('/room/1')).to.equal(['7']);
        await until(() => ours.seen.length === 3);
        expect(ours.joinedPaths()).to.equal(['/room/2']);

        const later = await peer(srv, 'john', { groups: true });
        expect(later.hello0.pulse.joined).to.equal(['/room/2']);
    });

    it('a membership with a ttl ends after it', async () => {

        const srv = await start();
        await srv.subscribeUser('john', '/room/1', { persist: true, ttl: 50 });
        await srv.subscribeUser('john', '/room/2', { persist: true });
        expect((await srv.userGroups('john')).sort()).to.equal(['/room/1', '/room/2']);
        await wait(80);
        expect(await srv.userGroups('john')).to.equal(['/room/2']);
        expect(await srv.groupMembers('/room/1')).to.equal([]);
    });

    it('a reconnecting client recovers what it missed on its groups while it had no socket', async () => {

        const srv = await start({}, (srv) => srv.subscription('/room/{id}', { history: { size: 50, ttl: 60000 } }));
        await srv.subscribeUser('john', ['/room/1', '/room/2'], { persist: true });
        const ours = await pulseClient(srv, 'john', { recovery: true });
        await srv.publish('/room/1', 'before');
        await srv.publish('/room/2', 'before 2');
        await until(() => ours.seen.length === 2);
        ours.seen.splice(1);

        let reconnected = false;
        ours.onConnect = () => (reconnected = true);
        await srv.eachSocket((socket) => socket.disconnect());
        await srv.unsubscribeUser('john', '/room/2');                       // while away: gone at the next hello
        expect(ours.joinedPaths()).to.equal(['/room/1', '/room/2']);
        await srv.publish('/room/1', 'missed 1');
        await srv.publish('/room/1', 'missed 2');
        await until(() => reconnected, 5000, 'reconnection');
        await srv.publish('/room/1', 'live');
        await until(() => ours.seen.length === 4);
        expect(ours.seen.map(({ message }) => message)).to.equal(['before', 'missed 1', 'missed 2', 'live']);
        expect(ours.seen.map(({ flags }) => flags.path)).to.equal(['/room/1', '/room/1', '/room/1', '/room/1']);
        expect(ours.joinedPaths()).to.equal(['/room/1']);
    });

    it('tells the handler when what was missed on a group cannot be recovered', async () => {

        const srv = await start({}, (srv) => srv.subscription('/room/{id}', { history: { size: 1, ttl: 60000 } }));
        await srv.subscribeUser('john', '/room/1', { persist: true });
        const ours = await pulseClient(srv, 'john', { recovery: true });
        await srv.publish('/room/1', 'before');
        await until(() => ours.seen.length === 1);

        let reconnected = false;
        ours.onConnect = () => (reconnected = true);
        await srv.eachSocket((socket) => socket.disconnect());
        await srv.publish('/room/1', 'trimmed');
        await srv.publish('/room/1', 'kept');
        await until(() => reconnected, 5000, 'reconnection');
        await until(() => ours.seen.length === 2);
        expect(ours.seen[1]).to.equal({ message: undefined, flags: { recovered: false, path: '/room/1', params: { id: '1' } } });
    });
});

describe('limits', () => {

    it('refuses a server-side subscribe over a socket\'s maxSubscriptions with a clear error, logged, nothing applied', async () => {

        const srv = await start({ limits: { maxSubscriptions: 2 } });
        const full = await pulseClient(srv, 'john');
        const roomy = await pulseClient(srv, 'john');
        await srv.subscribeSocket(full.id!, '/room/1');

        await expect(srv.subscribeUser('john', ['/room/2', '/room/3'])).to.reject(`Too many subscriptions: socket ${full.id} can take 1 more, not 2`);
        await expect(srv.subscribeUser('john', ['/room/2', '/room/3'], { persist: true })).to.reject(/Too many subscriptions/);
        expect(await srv.userGroups('john')).to.equal([]);
        await wait(30);
        expect(roomy.joinedPaths()).to.equal([]);
        expect(full.joinedPaths()).to.equal(['/room/1']);
        const logged = srv.logs.filter(({ tags }) => tags.includes('subscribe') && tags.includes('error'));
        expect(logged.length).to.equal(2);
        expect(logged[0]!.data.socket).to.equal(full.id);

        await expect(srv.subscribeUser('john', ['/room/1', '/room/2', '/room/3'])).to.reject('Too many subscriptions: 3 paths, maxSubscriptions is 2');
        await srv.subscribeUser('john', ['/room/1', '/room/2']);         // one new path each fits
        await until(() => roomy.joinedPaths().length === 2 && full.joinedPaths().length === 2);
    });

    it('refuses a persistent membership that would give the user more than maxSubscriptions paths', async () => {

        const srv = await start({ limits: { maxSubscriptions: 2 } });
        await srv.subscribeUser('john', ['/room/1', '/room/2'], { persist: true });
        await expect(srv.subscribeUser('john', '/room/3', { persist: true })).to.reject('Too many subscriptions');
        expect((await srv.userGroups('john')).sort()).to.equal(['/room/1', '/room/2']);
        await srv.subscribeUser('john', '/room/2', { persist: true, ttl: 1000 });     // held already: fits
        expect(srv.logs.filter(({ tags }) => tags.includes('subscribe')).length).to.equal(1);
    });

    it('joins at hello only what fits beside the client\'s own subscriptions', async () => {

        const srv = await start({ limits: { maxSubscriptions: 3 } });
        await srv.subscribeUser('john', ['/room/1', '/room/2', '/room/3'], { persist: true });
        const raw = await Peer.open(url(srv));
        defer(() => raw.close());
        const hello = await raw.hello({ auth: header('john'), subs: ['/room/2', '/room/9'], pulse: { groups: true } });
        expect(hello.pulse.joined).to.equal(['/room/1']);                   // /room/2 is the client's own
        expect(srv.logs.some(({ tags, data }) => tags.includes('subscribe') && data.path === '/room/3' && data.error === 'Too many subscriptions')).to.be.true();
    });
});

describe('publish to many paths', () => {

    it('delivers once per socket with once (on the first listed path it holds), once per path without', async () => {

        const srv = await start({}, (srv) => {

            srv.subscription('/room/{id}', { filter: (path, message, { credentials }) => !(path === '/room/2' && credentials!.user === 'jane') });
            srv.subscription('/unused');
        });

        const john = await pulseClient(srv, 'john');
        const jane = await pulseClient(srv, 'jane');
        const jim = await pulseClient(srv, 'jim');
        await srv.subscribeUser('john', ['/room/1', '/room/2']);
        await srv.subscribeUser('jane', ['/room/2', '/room/3']);
        await srv.subscribeUser('jim', ['/room/3']);
        await until(() => john.seen.length === 2 && jane.seen.length === 2 && jim.seen.length === 1);
        for (const client of [john, jane, jim]) {
            client.seen.length = 0;
        }

        await srv.publish(['/room/2', '/room/1', '/room/3', '/room/2', '/unused', '/nowhere'], 'once', { once: true });
        await until(() => john.seen.length === 1 && jim.seen.length === 1);
        await wait(30);
        expect(john.seen.map(({ flags }) => flags.path)).to.equal(['/room/2']);
        expect(jane.seen).to.equal([]);                                   // /room/2 is hers first, and its filter drops her
        expect(jim.seen.map(({ flags }) => flags.path)).to.equal(['/room/3']);

        await srv.publish(['/room/1', '/room/2', '/room/3'], 'each');
        await until(() => john.seen.length === 3 && jane.seen.length === 1 && jim.seen.length === 2);
        expect(john.seen.slice(1).map(({ flags }) => flags.path)).to.equal(['/room/1', '/room/2']);
        expect(jane.seen.map(({ flags }) => flags.path)).to.equal(['/room/3']);

        await srv.publish([], 'none', { once: true });
        expect(() => srv.publish(['/room/1', 'bad'], 'x')).to.throw('Missing or invalid subscription path: bad');
    });

    it('targets a user and replays once-per-socket publishes on the same path only', async () => {

        const srv = await start({}, (srv) => srv.subscription('/room/{id}', { history: { size: 10, ttl: 60000 }, auth: { index: true } }));
        const john = await pulseClient(srv, 'john', { recovery: true });
        await srv.subscribeUser('john', ['/room/1', '/room/2'], { persist: true });
        await until(() => john.seen.length === 2);
        john.seen.length = 0;

        let reconnected = false;
        john.onConnect = () => (reconnected = true);
        await srv.eachSocket((socket) => socket.disconnect());
        await srv.publish(['/room/1', '/room/2'], 'missed', { once: true, user: 'john' });
        await srv.publish(['/room/1', '/room/2'], 'not john', { once: true, user: 'jane' });
        await until(() => reconnected, 5000, 'reconnection');
        await srv.publish(['/room/2', '/room/1'], 'live', { once: true });
        await until(() => john.seen.length === 2);
        await wait(30);
        expect(john.seen.map(({ message, flags }) => [message, flags.path])).to.equal([['missed', '/room/1'], ['live', '/room/2']]);
    });
});

describe('publish to many paths: the broker call', () => {

    const subscribed = async (srv: Hapi.Server, paths: string[]): Promise<unknown[]> => {

        const client = await nesClient(srv, 'john');
        const got: unknown[] = [];
        for (const path of paths) {
            await client.subscribe(path, (message: unknown) => got.push([path, message]));
        }

        return got;
    };

    it('hands the broker one publishMany() call, or one publish() per path to a broker without it', async () => {

        const calls: string[] = [];
        const many = new MemoryBroker();
        const publishMany = many.publishMany.bind(many);
        many.publishMany = (publishes) => {

            calls.push(`many ${publishes.map(({ envelope }) => envelope.path).join(' ')}`);
            return publishMany(publishes);
        };

        const inner = new MemoryBroker();
        const plain: Broker = {
            start: (sink: BrokerSink) => inner.start(sink),
            stop: () => inner.stop(),
            publish: (envelope, history) => {

                calls.push(`one ${envelope.path}`);
                return inner.publish(envelope, history);
            },
            broadcast: (envelope) => inner.broadcast(envelope),
            subscribe: () => inner.subscribe(),
            unsubscribe: () => inner.unsubscribe(),
            recover: (path, since, history) => inner.recover(path, since, history)
        };

        for (const broker of [many, plain]) {
            const srv = await start({ broker }, (hapi) => hapi.subscription('/room/{id}', { history: { size: 10, ttl: 60000 } }));
            const got = await subscribed(srv, ['/room/1', '/room/2']);
            await srv.publish(['/room/1', '/nowhere', '/room/2', '/room/1'], 'both');
            await srv.publish(['/nowhere', '/room/2'], 'one left: a plain publish');
            await until(() => got.length === 3);
            expect(got).to.equal([['/room/1', 'both'], ['/room/2', 'both'], ['/room/2', 'one left: a plain publish']]);
        }

        expect(calls).to.equal(['many /room/1 /room/2', 'one /room/1', 'one /room/2', 'one /room/2']);
    });

    it('rejects with a filter\'s programmer error once every path was delivered (in-process broker)', async () => {

        const srv = await start({}, (hapi) => hapi.subscription('/room/{id}', { filter: (path, message) => (path === '/room/1' && message === 'bug' ? (null as any).field : true) }));
        const got = await subscribed(srv, ['/room/1', '/room/2']);
        await expect(srv.publish(['/room/1', '/room/2'], 'bug')).to.reject(TypeError);
        await until(() => got.length === 1);
        await srv.publish(['/room/1', '/room/2'], 'fine');
        await until(() => got.length === 3);
        expect(got).to.equal([['/room/2', 'bug'], ['/room/1', 'fine'], ['/room/2', 'fine']]);
        expect(srv.logs.filter(({ tags }) => tags.includes('filter')).map(({ data }) => data.path)).to.equal(['/room/1']);
    });
});

describe('server-side subscriptions: edges', () => {

    it('routes by pattern: the first matching pattern gets the path, a path no pattern matches is dropped', async () => {

        const srv = await start({}, (srv) => {

            srv.subscription('/room/{id}');
            srv.subscription('/deep/{a}/{b}');
        });

        const client = new Client(url(srv));
        client.onError = () => { };
        const teams: unknown[] = [];
        const rooms: unknown[] = [];
        client.joined('/room/lobby', (message) => teams.push(message));
        client.joined('/room/{id}', (message, flags) => rooms.push([message, flags.params]));
        expect(() => client.joined('room', () => { })).to.throw('Invalid pattern');
        expect(() => client.joined(5 as any, () => { })).to.throw('Invalid pattern');
        expect(() => client.joined('/room', null as any)).to.throw('Invalid handler');
        await client.connect({ auth: header('john') });
        defer(() => client.disconnect());

        await srv.subscribeSocket(client.id!, ['/room/lobby', '/room/7', '/deep/1/2']);
        await srv.publish(['/room/lobby', '/room/7', '/deep/1/2'], 'm');
        await until(() => teams.length === 2 && rooms.length === 2);
        expect(teams).to.equal([undefined, 'm']);
        expect(rooms).to.equal([[undefined, { id: '7' }], ['m', { id: '7' }]]);
        expect(client.joinedPaths()).to.equal(['/room/lobby', '/room/7', '/deep/1/2']);
    });

    it('asks nothing of a stock nes server', async () => {

        const srv = await server({}, 'nes');
        srv.subscription('/room/{id}');
        await srv.start();
        defer(() => srv.stop());
        const client = new Client(url(srv));
        client.joined('/room/{id}', () => { });
        await client.connect();
        defer(() => client.disconnect());
        expect(client.joinedPaths()).to.equal([]);
    });

    it('leaves a path to the client that subscribes it itself meanwhile, and a socket gone while onSubscribe ran', async () => {

        const srv = await start({}, (srv) => srv.subscription('/room/{id}', {
            onSubscribe: async (socket, path) => {

                await wait(30);
                if (path === '/room/bye') {
                    await socket.disconnect();
                }
            }
        }));

        const ours = await pulseClient(srv, 'john');
        const own: unknown[] = [];
        const subscribing = ours.subscribe('/room/1', (message) => own.push(message));
        await wait(5);
        await Promise.all([srv.subscribeSocket(ours.id!, '/room/1'), subscribing]);
        await srv.publish('/room/1', 'own');
        await until(() => own.length === 1);
        expect(ours.seen).to.equal([]);
        expect(ours.joinedPaths()).to.equal([]);

        const leaving = await pulseClient(srv, 'jim');
        await srv.subscribeSocket(leaving.id!, '/room/bye');
        expect(srv.pulseStats().subscriptions).to.equal(1);
        expect(leaving.seen).to.equal([]);
    });

    it('skips a socket still in its hello (it joins the recorded memberships only)', async () => {

        let release!: () => void;
        const held = new Promise<void>((resolve) => (release = resolve));
        const srv = await start({ onConnection: () => held });
        const raw = await Peer.open(url(srv));
        defer(() => raw.close());
        const hello = raw.hello({ auth: header('john'), pulse: { groups: true } });
        await until(() => srv.pulseStats().users === 1);
        await srv.subscribeUser('john', '/room/1');
        await srv.subscribeUser('john', '/room/2', { persist: true });
        release();
        expect((await hello).pulse.joined).to.equal(['/room/2']);
    });

    it('announces a history path without a position to a socket without recovery', async () => {

        const srv = await start({}, (srv) => srv.subscription('/room/{id}', { history: { size: 10, ttl: 60000 } }));
        const raw = await peer(srv, 'john', { groups: true });
        await srv.subscribeUser('john', '/room/1');
        await until(() => frames(raw, 'join').length === 1);
        expect(frames(raw, 'join')).to.equal([{ type: 'join', path: '/room/1' }]);
    });

    it('a command from another node that a socket cannot take is refused there, logged, nothing applied', async () => {

        class Remote extends MemoryBroker {

            remote!: BrokerSink;
            override start(sink: BrokerSink): Promise<void> {

                this.remote = sink;
                return super.start(sink);
            }
        }

        const broker = new Remote();
        const srv = await start({ broker, limits: { maxSubscriptions: 1 } });
        const ours = await pulseClient(srv, 'john');
        await broker.remote.membership!({ action: 'subscribe', paths: ['/room/1', '/room/2'], user: 'john' });
        expect(ours.joinedPaths()).to.equal([]);
        expect(srv.pulseStats().subscriptions).to.equal(0);
        expect(srv.logs.filter(({ tags }) => tags.includes('subscribe')).map(({ data }) => data.error.output.statusCode)).to.equal([429]);
    });

    it('goes on without memberships that cannot be read (logged), closes with try-again when a route is unavailable, leaves a refused one out', async () => {

        class Unreachable extends MemoryBroker {

            down = false;
            constructor() {

                super();
                const paths = this.groups.paths.bind(this.groups);
                this.groups.paths = (user) => (this.down ? Promise.reject(Boom.serverUnavailable('Redis down')) : paths(user));
            }
        }

        const broker = new Unreachable();
        const srv = await start({ broker }, (srv) => srv.subscription('/room/{id}', {
            onSubscribe: (_socket, path) => {

                if (path === '/room/busy') {
                    throw Boom.serverUnavailable('busy');
                }

                if (path === '/room/no') {
                    throw Boom.forbidden('no');
                }
            }
        }));

        await srv.subscribeUser('john', ['/room/no', '/room/1'], { persist: true });
        const refused = await peer(srv, 'john', { groups: true });
        expect(refused.hello0.pulse.joined).to.equal(['/room/1']);
        expect(refused.closed).to.be.null();

        await srv.subscribeUser('john', '/room/busy', { persist: true });
        const busy = await peer(srv, 'john', { groups: true });
        expect(busy.hello0.pulse.joined).to.equal(['/room/1']);
        expect((await busy.closedWith()).code).to.equal(CloseCode.tryAgain);

        broker.down = true;
        const down = await peer(srv, 'john', { groups: true });
        expect(down.hello0.pulse.joined).to.equal([]);
        await wait(50);
        expect(down.closed).to.be.null();
        expect(srv.logs.filter(({ tags }) => tags.includes('subscribe')).map(({ data }) => data.error.message)).to.equal(['no', 'busy', 'no', 'busy', 'Redis down']);        // the connected socket is told of /room/busy too
    });

    // A node that misses membership commands (as one whose broker subscription is down), told by the broker to read
    // the recorded memberships again (as the Redis broker does once its subscription is back)
    class Deaf extends MemoryBroker {

        deaf = false;
        reads = 0;
        failing = 0;                                                 // the next reads that fail (the broker out of reach)
        duringRead: (() => Promise<void>) | null = null;             // runs after a read, before its answer is returned
        remote!: BrokerSink;

        constructor() {

            super();
            const paths = this.groups.paths.bind(this.groups);
            this.groups.paths = async (user) => {

                ++this.reads;
                const recorded = await paths(user);
                if (this.failing) {
                    --this.failing;
                    throw Boom.serverUnavailable('Redis down');
                }

                const during = this.duringRead;
                this.duringRead = null;
                await during?.();
                return recorded;
            };
        }

        override start(sink: BrokerSink): Promise<void> {

            this.remote = sink;
            return super.start({ ...sink, membership: (command) => (this.deaf ? undefined : sink.membership!(command)) });
        }
    }

    it('reloads the recorded memberships: joins those missed, leaves the removed ones it joined through a record, keeps the rest; retries a failed read', async () => {

        const broker = new Deaf();
        const srv = await start({ broker });
        await srv.subscribeUser('john', '/room/2', { persist: true });
        const john = await pulseClient(srv, 'john');                              // joins /room/2 at hello
        await srv.subscribeUser('john', '/room/6', { persist: true });            // by a recorded command
        await srv.subscribeUser('john', '/room/7');                               // by a command not recorded
        await john.subscribe('/room/3', () => { });                               // his own
        await srv.subscribeUser('john', '/room/3', { persist: true });            // recorded, already his own
        await srv.subscribeUser('john', '/room/5', { persist: true, ttl: 100 });  // recorded until its ttl
        await srv.subscribeUser('john', '/room/4', { persist: true });
        await john.subscribe('/room/4', () => { });
        await john.unsubscribe('/room/4');                                        // he left it himself
        const jane = await pulseClient(srv, 'jane');
        expect(srv.pulseStats().subscriptions).to.equal(5);                       // /room/2, 3, 5, 6, 7

        broker.deaf = true;
        await srv.subscribeUser('john', '/room/1', { persist: true });
        await srv.unsubscribeUser('john', ['/room/2', '/room/3', '/room/6', '/room/7']);
        await srv.subscribeUser('jane', '/room/1', { persist: true });
        broker.deaf = false;
        await wait(100);                                                          // /room/5's record ends

        broker.failing = 1;
        broker.remote.reloadGroups!();
        await until(() => srv.logs.some(({ data }) => data?.reload), 1000, 'failed read');
        expect(srv.pulseStats().subscriptions).to.equal(5);
        await until(() => srv.pulseStats().subscriptions === 5 && jane.joinedPaths().join() === '/room/1', 3000, 'retried');
        await until(() => john.seen.filter(({ flags }) => flags.revoked).length === 3, 1000, 'revokes');
        expect(john.subscriptions()).to.equal(['/room/3']);
        expect(john.joinedPaths().sort()).to.equal(['/room/1', '/room/4', '/room/7']);
        expect(john.seen.filter(({ flags }) => flags.revoked).map(({ message, flags }) => [flags.path, message]).sort()).to.equal([['/room/2', undefined], ['/room/5', undefined], ['/room/6', undefined]]);
        expect(srv.logs.filter(({ data }) => data?.reload).map(({ data }) => data.error.message)).to.equal(['Redis down']);

        await srv.publish(['/room/1', '/room/4'], 'after');                       // /room/4 joined again
        await until(() => john.seen.filter(({ message }) => message === 'after').length === 2);
    });

    it('reads a user\'s memberships again when a command reached its sockets during the read; joins only what fits and what the route allows', async () => {

        const broker = new Deaf();
        const srv = await start({ broker, limits: { maxSubscriptions: 2 } }, (srv) => srv.subscription('/room/{id}', {
            onSubscribe: (_socket, path) => {

                if (path === '/room/9') {
                    throw Boom.forbidden('no');
                }
            }
        }));

        const john = await pulseClient(srv, 'john');
        const jane = await pulseClient(srv, 'jane');
        broker.deaf = true;
        await srv.subscribeUser('john', '/room/9', { persist: true });
        await srv.subscribeUser('jane', ['/room/1', '/room/2'], { persist: true });
        broker.deaf = false;
        await jane.subscribe('/room/3', () => { });                               // her own: room for one more

        broker.duringRead = () => srv.subscribeUser('john', '/room/8', { persist: true });      // after the read, before its answer
        const reads = broker.reads;
        broker.remote.reloadGroups!();
        await until(() => jane.joinedPaths().length === 1, 1000, 'jane');
        await wait(30);
        expect(broker.reads - reads).to.equal(3);                                 // john twice
        expect(john.joinedPaths()).to.equal(['/room/8']);                         // the first read did not have it
        expect(srv.logs.filter(({ data }) => data?.error === 'Too many subscriptions').map(({ data }) => data.path)).to.equal(['/room/2']);
        expect(srv.logs.filter(({ data }) => data?.error?.message === 'no').map(({ data }) => data.path)).to.equal(['/room/9']);       // the route refused it
    });

    it('reloads nothing without a broker that records memberships', async () => {

        class Plain extends MemoryBroker {

            remote!: BrokerSink;
            override start(sink: BrokerSink): Promise<void> {

                this.remote = sink;
                return super.start(sink);
            }
        }

        const broker = new Plain();
        Object.defineProperty(broker, 'groups', { value: undefined });
        const srv = await start({ broker });
        await pulseClient(srv, 'john');
        broker.remote.reloadGroups!();
        await wait(20);
        expect(srv.logs.filter(({ data }) => data?.reload)).to.equal([]);
    });

    it('sweeps ended memberships nobody reads', async () => {

        const broker = new MemoryBroker();
        const srv = await start({ broker }, (srv) => srv.subscription('/room/{id}', { history: { size: 1, ttl: 1000 } }));
        await srv.publish('/room/1', 'makes the sweep run every second');
        await srv.subscribeUser('john', '/room/1', { persist: true, ttl: 20 });
        expect(broker.groups.size).to.equal(1);
        await until(() => broker.groups.size === 0, 3000, 'sweep');
    });
});
