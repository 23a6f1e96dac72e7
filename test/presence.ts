// Presence over real sockets: members, counts and paths of users through server.presence; followers (a stock nes
// client, a raw peer, our client's followPresence()) getting the list then batched diffs; auth and limits; store
// faults. Then the store conformance suite, run against every broker with a presence store.

import { fork } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as Path from 'node:path';

import * as Boom from '@hapi/boom';
import * as Code from '@hapi/code';
import type * as Hapi from '@hapi/hapi';
import * as Lab from '@hapi/lab';
import { createClient } from '@redis/client';

import { Client, MemoryBroker, presencePath } from '../lib/index';
import type { Broker, BrokerSink, PresenceChange, PresenceEntry, PresenceStore, PublishEnvelope } from '../lib/index';
import { RedisBroker } from '../lib/redis';
import { deleteRedisKeys, jsonAuth, Nes, Peer, PrivateRedis, redisAvailable, redisServerAvailable, redisUrl, server, skipWithoutRedis, url, until, wait } from './helpers';

const { expect } = Code;
const lab = Lab.script();
export { lab };
const { describe, it } = lab;

const start = async (setup: (srv: Hapi.Server) => void, options: Record<string, unknown> = {}): Promise<Hapi.Server> => {

    const srv = await server({ auth: { type: 'direct', route: { strategy: 'json', mode: 'optional' } }, ...options }, 'pulse', jsonAuth);
    setup(srv);
    await srv.start();
    return srv;
};

const auth = (credentials: Record<string, unknown>) => ({ auth: { headers: { authorization: JSON.stringify(credentials) } } });

const nes = async (srv: Hapi.Server, credentials?: Record<string, unknown>): Promise<InstanceType<typeof Nes.Client>> => {

    const client = new Nes.Client(url(srv));
    await client.connect(credentials ? auth(credentials) : {});
    return client;
};

const peer = async (srv: Hapi.Server, credentials?: Record<string, unknown>, subs?: string[]): Promise<Peer> => {

    const opened = await Peer.open(url(srv));
    const reply = await opened.hello({ ...(credentials ? auth(credentials) : {}), ...(subs ? { subs } : {}) });
    expect(reply.statusCode).to.not.exist();
    return opened;
};

const pubs = (opened: Peer): any[] => opened.frames.map((frame) => JSON.parse(frame)).filter((message) => message.type === 'pub');

// What a follower holds after applying every presence message it received, in order.
const replay = (messages: any[]): Map<string, unknown> => {

    const members = new Map<string, unknown>();
    for (const message of messages) {
        if (message.presence === 'list') {
            members.clear();
            message.members.forEach((member: any) => members.set(member.id, member.info));
            continue;
        }

        [...message.joins, ...message.updates].forEach((member: any) => members.set(member.id, member.info));
        message.leaves.forEach((id: string) => members.delete(id));
    }

    return members;
};

const logged = (srv: Hapi.Server, tag: string): any[] => {

    const events: any[] = [];
    srv.events.on({ name: 'log', channels: 'app' } as any, (event: any) => {

        if (event.tags.includes(tag)) {
            events.push(event);
        }
    });

    return events;
};

const eventually = async (check: () => Promise<boolean>, timeout = 3000): Promise<void> => {

    const end = Date.now() + timeout;
    while (!await check()) {
        if (Date.now() > end) {
            throw new Error('Timed out waiting for condition');
        }

        await wait(5);
    }
};

const room = { info: (credentials: Record<string, any>) => ({ alias: credentials.alias }), interval: 30 };

describe('presence', () => {

    it('lets a stock nes client follow the members of a path: the list, then joins, leaves and the anonymous count, with info only', async () => {

        const srv = await start((s) => s.subscription('/room/{id}', { presence: room }));
        const follower = await nes(srv);
        const got: any[] = [];
        await follower.subscribe('/$presence/room/1', (message) => got.push(message));
        await until(() => got.length === 1);
        expect(got[0]).to.equal({ presence: 'list', members: [], anonymous: 0 });

        const john = await nes(srv, { user: 'john', alias: 'J', password: 'hunter2' });
        await john.subscribe('/room/1', () => { });
        await until(() => got.length === 2);
        const id = got[1].joins[0]?.id;
        expect(got[1]).to.equal({ presence: 'diff', joins: [{ id, info: { alias: 'J' } }], updates: [], leaves: [], anonymous: 0 });
        expect(id).to.be.a.string();
        expect(id).to.not.include('john');

        // Another socket of john is no new member; an anonymous socket is counted, not listed; another path is not here
        const again = await nes(srv, { user: 'john', alias: 'J' });
        await again.subscribe('/room/1', () => { });
        const anonymous = await nes(srv);
        await anonymous.subscribe('/room/1', () => { });
        const elsewhere = await nes(srv, { user: 'jane', alias: 'Ja' });
        await elsewhere.subscribe('/room/2', () => { });
        await until(() => got.length === 3);
        expect(got[2]).to.equal({ presence: 'diff', joins: [], updates: [], leaves: [], anonymous: 1 });

        expect(await srv.presence.count('/room/1')).to.equal({ users: 1, sockets: 3, anonymous: 1 });
        expect(await srv.presence.members('/room/1')).to.equal([{ user: 'john', info: { alias: 'J' }, sockets: 2 }]);
        expect(await srv.presence.paths('john')).to.equal(['/room/1']);
        expect(await srv.presence.paths('jane')).to.equal(['/room/2']);
        expect(await srv.presence.count('/room/3')).to.equal({ users: 0, sockets: 0, anonymous: 0 });

        // A later follower gets the whole list, with the same id
        const late = await nes(srv);
        const lateGot: any[] = [];
        await late.subscribe('/$presence/room/1', (message) => lateGot.push(message));
        await until(() => lateGot.length === 1);
        expect(lateGot[0]).to.equal({ presence: 'list', members: [{ id, info: { alias: 'J' } }], anonymous: 1 });

        // john keeps one socket: only the anonymous count changes; then his last one leaves
        await Promise.all([john.disconnect(), anonymous.disconnect()]);
        await until(() => got.length === 4);
        expect(got[3]).to.equal({ presence: 'diff', joins: [], updates: [], leaves: [], anonymous: 0 });
        await again.unsubscribe('/room/1');
        await until(() => got.length === 5);
        expect(got[4]).to.equal({ presence: 'diff', joins: [], updates: [], leaves: [id], anonymous: 0 });
        expect(await srv.presence.count('/room/1')).to.equal({ users: 0, sockets: 0, anonymous: 0 });
        expect(await srv.presence.paths('john')).to.equal([]);
        expect(lateGot.length).to.equal(3);

        await Promise.all([follower, again, elsewhere, late].map((client) => client.disconnect()));
        await srv.stop();
    });

    it('keeps the member list for our client: list, diffs, info updates, a fresh list after a reconnection, stop and revoke', async () => {

        const srv = await start((s) => s.subscription('/room/{id}', { presence: room }));
        const client = new Client(url(srv));
        const errors: string[] = [];
        client.onError = (err) => errors.push(err.message);
        await client.connect({ delay: 10 });
        const seen: (string | null)[] = [];
        const follower = await client.followPresence<{ alias: string }>('/room/1', (_follower, message) => seen.push(message?.presence ?? null));
        await until(() => follower.synced);
        expect(follower.path).to.equal('/room/1');
        expect(follower.members.size).to.equal(0);

        const john = await nes(srv, { user: 'john', alias: 'J' });
        await john.subscribe('/room/1', () => { });
        const anonymous = await nes(srv);
        await anonymous.subscribe('/room/1', () => { });
        await until(() => follower.members.size === 1 && follower.anonymous === 1);
        expect([...follower.members.values()]).to.equal([{ alias: 'J' }]);

        expect(await srv.presence.update('/room/1', 'john', { alias: 'Johnny' })).to.be.true();
        await until(() => follower.members.values().next().value!.alias === 'Johnny');
        expect(seen[0]).to.equal('list');
        expect(seen.slice(1).every((kind) => kind === 'diff')).to.be.true();

        // Reconnection: not synced until the fresh list, which no longer has john
        let disconnected = false;
        client.onDisconnect = () => {

            disconnected = true;
        };

        await john.disconnect();
        await srv.eachSocket((socket) => (socket.id === client.id ? socket.disconnect() : undefined));
        await until(() => disconnected);
        expect(follower.synced).to.be.false();
        const before = seen.length;
        await until(() => follower.synced && follower.members.size === 0);
        expect(follower.anonymous).to.equal(1);
        expect(seen.slice(before)[0]).to.equal('list');                 // then a diff, if john's leave came after it
        expect(errors).to.equal([]);

        await follower.stop();
        expect(client.subscriptions()).to.equal([]);

        // A follower revoked with a message (as in nes, handlers hear of a revoke only with one) is told, and no longer synced
        const revoked = await client.followPresence('/room/2', (_follower, message) => seen.push(message?.presence ?? null));
        await until(() => revoked.synced);
        await srv.eachSocket((socket) => socket.revoke('/$presence/room/2', { reason: 'closed' }), { subscription: '/$presence/room/2' });
        await until(() => seen.at(-1) === null);
        expect(revoked.synced).to.be.false();

        await Promise.all([client, anonymous].map((item) => item.disconnect()));
        await srv.stop();
    });

    it('sends each follower at most one diff per interval: joins of many sockets together, a mass reconnection of 1,000 sockets in a few diffs', { timeout: 60000 }, async () => {

        const interval = 400;
        const srv = await start((s) => s.subscription('/room/{id}', { presence: { interval } }), { heartbeat: false });
        const follower = await peer(srv, undefined, ['/$presence/room/1']);
        await until(() => pubs(follower).length === 1);

        const count = 1000;
        const join = () => Promise.all(Array.from({ length: count }, (_, i) => peer(srv, { user: `u${i}` }, ['/room/1'])));
        let started = Date.now();
        let peers = await join();
        await until(() => replay(pubs(follower).map((pub) => pub.message)).size === count, 20000, 'every join');
        let elapsed = Date.now() - started;
        const joined = pubs(follower).length - 1;
        expect(joined).to.be.at.most(Math.ceil(elapsed / interval) + 1);

        // Every socket leaves and comes back
        started = Date.now();
        peers.forEach((item) => item.close());
        await until(() => srv.pulseStats().sockets === 1, 20000, 'closes');
        peers = await join();
        await until(() => srv.pulseStats().subscriptions === count + 1, 20000, 'rejoins');
        await wait(2 * interval + 100);
        elapsed = Date.now() - started;
        const diffs = pubs(follower).length - 1 - joined;
        expect(diffs).to.be.at.most(Math.ceil(elapsed / interval) + 1);
        expect(replay(pubs(follower).map((pub) => pub.message)).size).to.equal(count);
        expect(await srv.presence.count('/room/1')).to.equal({ users: count, sockets: count, anonymous: 0 });

        peers.forEach((item) => item.close());
        follower.close();
        await srv.stop();
    });

    it('sends nothing for a member who leaves and comes back within the interval, even once its leave was written', { timeout: 20000 }, async () => {

        // The writes of this node follow the shortest interval (/fast); the followers of /room get one diff per second
        const srv = await start((s) => {

            s.subscription('/room/{id}', { presence: { interval: 1000 } });
            s.subscription('/fast', { presence: { interval: 10 } });
        });

        const follower = await peer(srv, undefined, ['/$presence/room/1']);
        await until(() => pubs(follower).length === 1);                       // the list, before any member
        const john = await peer(srv, { user: 'john' }, ['/room/1']);
        await until(() => pubs(follower).length === 2);

        john.close();
        await until(() => srv.pulseStats().sockets === 1);
        await wait(100);                                                     // the leave is written and received

        // A follower arriving now gets its list with the next diff, from the same state as the others
        const late = await peer(srv, undefined, ['/$presence/room/1']);
        const back = await peer(srv, { user: 'john' }, ['/room/1']);
        const visitor = await peer(srv, { user: 'visitor' }, ['/room/1']);     // joins and leaves within the interval
        await wait(50);
        visitor.close();
        await wait(1200);
        expect(pubs(follower).length).to.equal(2);
        expect(pubs(late).map((pub) => pub.message.presence)).to.equal(['list']);
        expect(replay(pubs(late).map((pub) => pub.message))).to.equal(replay(pubs(follower).map((pub) => pub.message)));

        // Still followed: the next change arrives. An anonymous socket changes only the count: a follower arriving
        // meanwhile also waits for it.
        const jane = await peer(srv, { user: 'jane' }, ['/room/1']);
        await until(() => pubs(follower).length === 3, 3000);
        expect(pubs(follower)[2].message.joins.length).to.equal(1);
        expect(replay(pubs(follower).map((pub) => pub.message)).size).to.equal(2);
        const anonymous = await peer(srv, undefined, ['/room/1']);
        await wait(50);
        const later = await peer(srv, undefined, ['/$presence/room/1']);
        await until(() => pubs(later).length === 1, 3000);
        expect(pubs(later)[0].message).to.include({ presence: 'list', anonymous: 1 });
        expect(pubs(follower).at(-1).message).to.include({ presence: 'diff', anonymous: 1 });

        for (const item of [follower, late, later, back, jane, anonymous]) {
            item.close();
        }

        await srv.stop();
    });

    it('gives a derived path the auth of its source, runs onFollow, and sends the list after the hello reply', async () => {

        const srv = await start((s) => {

            s.subscription('/vip/{id}', {
                auth: { scope: 'vip' },
                presence: {
                    onFollow: (_socket, path, params) => {

                        if (params.id === 'closed') {
                            throw Boom.forbidden(`Cannot follow ${path}`);
                        }
                    }
                }
            });
            s.subscription('/plain');
            s.subscription('/slow', { onSubscribe: () => wait(100) });         // the hello is answered after it
        });

        const outsider = await peer(srv, { user: 'out' });
        expect((await outsider.reply({ type: 'sub', id: 1, path: '/$presence/vip/1' })).statusCode).to.equal(403);
        expect((await outsider.reply({ type: 'sub', id: 2, path: '/vip/1' })).statusCode).to.equal(403);
        expect((await outsider.reply({ type: 'sub', id: 3, path: '/$presence/plain' })).statusCode).to.equal(404);
        expect((await outsider.reply({ type: 'sub', id: 4, path: '/$presence/nothing' })).statusCode).to.equal(404);
        expect((await outsider.reply({ type: 'sub', id: 5, path: '/$presence' })).statusCode).to.equal(404);

        const member = await peer(srv, { user: 'vip', scope: ['vip'] });
        const closed = await member.reply({ type: 'sub', id: 1, path: '/$presence/vip/closed' });
        expect(closed.statusCode).to.equal(403);
        expect(closed.payload.message).to.equal('Cannot follow /$presence/vip/closed');

        const inHello = await Peer.open(url(srv));
        const reply = await inHello.hello({ ...auth({ user: 'vip2', scope: ['vip'] }), subs: ['/vip/1', '/$presence/vip/1', '/slow'] });
        expect(reply.type).to.equal('hello');
        const list = await inHello.next();
        expect(list.type).to.equal('pub');
        expect(list.path).to.equal('/$presence/vip/1');
        expect(list.message.presence).to.equal('list');
        await eventually(async () => (await srv.presence.count('/vip/1')).users === 1);

        for (const item of [outsider, member, inHello]) {
            item.close();
        }

        await srv.stop();
    });

    it('bounds members per path and info size, with a clear error', async () => {

        const srv = await start((s) => {

            s.subscription('/small', { presence: { maxMembers: 2, interval: 10 } });
            s.subscription('/info/{id}', {
                presence: {
                    maxInfoBytes: 20,
                    info: (credentials) => {

                        if (credentials.fail) {
                            throw new Error('info failed');
                        }

                        return credentials.alias === undefined ? undefined : { alias: credentials.alias };
                    }
                }
            });
            s.subscription('/plain', { presence: true });
        });

        const errors = logged(srv, 'presence');
        const john = await peer(srv, { user: 'john' }, ['/small']);
        const jane = await peer(srv, { user: 'jane' }, ['/small']);
        await eventually(async () => (await srv.presence.count('/small')).users === 2);
        const jim = await peer(srv, { user: 'jim' });
        const refused = await jim.reply({ type: 'sub', id: 1, path: '/small' });
        expect(refused.statusCode).to.equal(429);
        expect(refused.payload.message).to.equal('Too many members on this path');

        // A member's other socket, and anonymous sockets, still get in
        const johnAgain = await peer(srv, { user: 'john' });
        expect((await johnAgain.reply({ type: 'sub', id: 1, path: '/small' })).statusCode).to.not.exist();
        const anonymous = await peer(srv);
        expect((await anonymous.reply({ type: 'sub', id: 1, path: '/small' })).statusCode).to.not.exist();

        // Info over maxInfoBytes, or failing: refused (500) and logged
        const big = await peer(srv, { user: 'big', alias: 'x'.repeat(50) });
        expect((await big.reply({ type: 'sub', id: 1, path: '/info/1' })).statusCode).to.equal(500);
        const failing = await peer(srv, { user: 'failing', fail: true });
        expect((await failing.reply({ type: 'sub', id: 1, path: '/info/1' })).statusCode).to.equal(500);
        expect(errors.map((event) => event.data.error.message ?? event.data.error)).to.equal(['Presence info of 62 bytes is over maxInfoBytes (20)', 'info failed']);
        expect(await srv.presence.count('/info/1')).to.equal({ users: 0, sockets: 0, anonymous: 0 });

        const nameless = await peer(srv, { user: 'nameless' }, ['/info/2']);            // info() returned undefined
        const plain = await peer(srv, { user: 'plain' }, ['/plain']);                   // no info()
        await eventually(async () => (await srv.presence.count('/plain')).users === 1 && (await srv.presence.count('/info/2')).users === 1);
        expect(await srv.presence.members('/info/2')).to.equal([{ user: 'nameless', info: null, sockets: 1 }]);
        expect(await srv.presence.members('/plain')).to.equal([{ user: 'plain', info: null, sockets: 1 }]);
        nameless.close();
        plain.close();

        const small = await peer(srv, { user: 'small', alias: 's' }, ['/info/1']);
        await eventually(async () => (await srv.presence.count('/info/1')).users === 1);
        await expect(srv.presence.update('/info/1', 'small', { alias: 'y'.repeat(30) })).to.reject('Presence info of 42 bytes is over maxInfoBytes (20)');

        for (const item of [john, jane, jim, johnAgain, anonymous, big, failing, small]) {
            item.close();
        }

        await srv.stop();
    });

    it('validates options, paths and users', async () => {

        const srv = await server();
        const invalid: [string, unknown, string][] = [
            ['/a', { presence: 'yes' }, 'Invalid subscription options: /a (presence must be true or an object)'],
            ['/a', { presence: [] }, 'Invalid subscription options: /a (presence must be true or an object)'],
            ['/a', { presence: { other: 1 } }, 'Invalid subscription options: /a ("presence.other" is not allowed)'],
            ['/a', { presence: { info: 'alias' } }, 'Invalid subscription options: /a (presence.info must be a function)'],
            ['/a', { presence: { onFollow: 1 } }, 'Invalid subscription options: /a (presence.onFollow must be a function)'],
            ['/a', { presence: { interval: 0 } }, 'Invalid subscription options: /a (presence.interval, maxMembers and maxInfoBytes must be positive integers)'],
            ['/a', { presence: { maxMembers: 1.5 } }, 'Invalid subscription options: /a (presence.interval, maxMembers and maxInfoBytes must be positive integers)'],
            ['/a', { presence: { maxInfoBytes: -1 } }, 'Invalid subscription options: /a (presence.interval, maxMembers and maxInfoBytes must be positive integers)'],
            ['/$presence/a', {}, 'Subscription path cannot start with /$presence (reserved for presence): /$presence/a']
        ];

        for (const [path, options, message] of invalid) {
            expect(() => srv.subscription(path, options as any), message).to.throw(message);
        }

        expect(presencePath('/room/1')).to.equal('/$presence/room/1');
        srv.subscription('/room/{id}', { presence: true });
        srv.subscription('/off', { presence: false });
        srv.subscription('/plain');
        expect(() => srv.publish('/$presence/room/1', {})).to.throw('Cannot publish to a presence path: /$presence/room/1');
        await expect(srv.presence.count('/plain')).to.reject('Not a path of a subscription with presence: /plain');
        await expect(srv.presence.members('/off')).to.reject('Not a path of a subscription with presence: /off');
        await expect(srv.presence.members('/$presence/room/1')).to.reject('Not a path of a subscription with presence: /$presence/room/1');
        await expect(srv.presence.members(5 as any)).to.reject('Not a path of a subscription with presence: 5');
        await expect(srv.presence.paths(0)).to.reject('Invalid user: must be a non-empty string or a number');
        await expect(srv.presence.update('/room/1', '', {})).to.reject('Invalid user: must be a non-empty string or a number');

        // Before start: nothing anywhere
        expect(await srv.presence.stats()).to.equal({ node: { sockets: 0, users: 0 }, cluster: { nodes: 0, sockets: 0, users: 0 } });
        expect(await srv.presence.update('/room/1', 42, { alias: 'x' })).to.be.false();
    });

    it('needs a broker with a presence store', async () => {

        const memory = new MemoryBroker();
        const broker: Broker = {
            start: (sink) => memory.start(sink),
            stop: () => memory.stop(),
            publish: (envelope, history) => memory.publish(envelope, history),
            broadcast: (envelope) => memory.broadcast(envelope),
            subscribe: () => memory.subscribe(),
            unsubscribe: () => memory.unsubscribe(),
            recover: (path, since, history) => memory.recover(path, since, history)
        };

        const srv = await server({ broker });
        expect(() => srv.subscription('/room/{id}', { presence: true })).to.throw('Invalid subscription options: /room/{id} (presence needs a broker with a presence store)');
        await expect(srv.presence.stats()).to.reject('Presence needs a broker with a presence store');
    });

    it('reports sockets and users of the node and of the cluster, and updates info only of members', async () => {

        const srv = await start((s) => s.subscription('/room/{id}', { presence: room }));
        const follower = await peer(srv, undefined, ['/$presence/room/1']);
        await until(() => pubs(follower).length === 1);                       // the list, before any member
        const john = await peer(srv, { user: 'john', alias: 'J' }, ['/room/1']);
        const johnToo = await peer(srv, { user: 'john', alias: 'J' });
        const jane = await peer(srv, { user: 'jane' });
        const app = await peer(srv, { app: 'no user' });                                            // a socket, no user
        await eventually(async () => JSON.stringify(await srv.presence.stats()) === JSON.stringify({ node: { sockets: 5, users: 2 }, cluster: { nodes: 1, sockets: 5, users: 2 } }));
        jane.close();
        app.close();
        await eventually(async () => JSON.stringify(await srv.presence.stats()) === JSON.stringify({ node: { sockets: 3, users: 1 }, cluster: { nodes: 1, sockets: 3, users: 1 } }));

        await until(() => pubs(follower).length === 2);
        expect(await srv.presence.update('/room/1', 'jane', { alias: 'x' })).to.be.false();
        expect(await srv.presence.update('/room/1', 'john', { alias: 'J' })).to.be.true();          // unchanged: nothing sent
        expect(await srv.presence.update('/room/1', 'john', null)).to.be.true();
        await until(() => pubs(follower).length === 3);
        expect(pubs(follower)[2].message.updates).to.equal([{ id: pubs(follower)[1].message.joins[0].id, info: null }]);
        expect(await srv.presence.members('/room/1')).to.equal([{ user: 'john', info: null, sockets: 1 }]);

        for (const item of [follower, john, johnToo]) {
            item.close();
        }

        await srv.stop();
    });

    it('admits members exactly up to maxMembers: of users racing for the last places, the others are refused (429) with nothing left of them', async () => {

        const srv = await start((s) => s.subscription('/small', { presence: { maxMembers: 2, interval: 1000 } }));
        const john = await peer(srv, { user: 'john' }, ['/small']);
        const racers = await Promise.all(['ann', 'bob', 'cy', 'dan'].map((user) => peer(srv, { user })));
        const replies = await Promise.all(racers.map((racer) => racer.reply({ type: 'sub', id: 1, path: '/small' })));
        const admitted = racers.filter((_racer, i) => !replies[i].statusCode);
        expect(admitted.length).to.equal(1);
        for (const reply of replies.filter((item) => item.statusCode)) {
            expect(reply.statusCode).to.equal(429);
            expect(reply.payload.message).to.equal('Too many members on this path');
        }

        // Counted at once (not one interval later), and the refused hold no subscription
        expect(await srv.presence.count('/small')).to.equal({ users: 2, sockets: 2, anonymous: 0 });
        expect(srv.pulseStats().subscriptions).to.equal(2);
        await srv.publish('/small', 'hi');
        await until(() => admitted[0]!.frames.some((frame) => frame.includes('"hi"')));
        for (const racer of racers.filter((item) => item !== admitted[0])) {
            expect(racer.frames.some((frame) => frame.includes('"hi"'))).to.be.false();
        }

        // A member's other socket still gets in; once a member leaves, there is room again
        const johnToo = await peer(srv, { user: 'john' }, ['/small']);
        john.close();
        johnToo.close();
        await eventually(async () => (await srv.presence.count('/small')).users === 1);
        const late = racers.find((item) => item !== admitted[0])!;
        expect((await late.reply({ type: 'sub', id: 2, path: '/small' })).statusCode).to.not.exist();

        racers.forEach((item) => item.close());
        await srv.stop();
    });

    it('computes a member\'s info again after a reauth: followers get the update; another user leaves as the old one; an anonymous socket joins as its user', async () => {

        const srv = await start((s) => {

            s.subscription('/room/{id}', {
                presence: {
                    interval: 30,
                    maxInfoBytes: 40,
                    info: async (credentials) => {

                        if (credentials.slow) {
                            await wait(100);
                        }

                        if (credentials.fail) {
                            throw new Error('info failed');
                        }

                        return { alias: credentials.alias };
                    }
                }
            });
            s.subscription('/small', { presence: { maxMembers: 1, interval: 30 } });
        });

        const errors = logged(srv, 'presence');
        const reauth = (opened: Peer, credentials: Record<string, unknown>) => opened.reply({ type: 'reauth', id: `r${Math.random()}`, ...auth(credentials) });
        const follower = await peer(srv, undefined, ['/$presence/room/1']);
        await until(() => pubs(follower).length === 1);
        const john = await peer(srv, { user: 'john', alias: 'J' }, ['/room/1']);
        await until(() => pubs(follower).length === 2);
        const id = pubs(follower)[1].message.joins[0].id;

        // New info: an update; the same info, or info that fails or is too large (logged): nothing
        expect((await reauth(john, { user: 'john', alias: 'Johnny' })).statusCode).to.not.exist();
        await until(() => pubs(follower).length === 3);
        expect(pubs(follower)[2].message).to.equal({ presence: 'diff', joins: [], updates: [{ id, info: { alias: 'Johnny' } }], leaves: [], anonymous: 0 });
        expect(await srv.presence.members('/room/1')).to.equal([{ user: 'john', info: { alias: 'Johnny' }, sockets: 1 }]);
        expect((await reauth(john, { user: 'john', alias: 'Johnny' })).statusCode).to.not.exist();
        expect((await reauth(john, { user: 'john', fail: true })).statusCode).to.not.exist();
        expect((await reauth(john, { user: 'john', alias: 'x'.repeat(40) })).statusCode).to.not.exist();
        expect(errors.map((event) => event.data.error.message ?? event.data.error)).to.equal(['info failed', 'Presence info of 52 bytes is over maxInfoBytes (40)']);
        expect(await srv.presence.members('/room/1')).to.equal([{ user: 'john', info: { alias: 'Johnny' }, sockets: 1 }]);

        // A reauth as another user ends every subscription: john leaves, jane is no member
        expect((await reauth(john, { user: 'jane', alias: 'Ja' })).statusCode).to.not.exist();
        expect(john.frames.map((frame) => JSON.parse(frame)).filter((frame) => frame.type === 'revoke').map((frame) => frame.path)).to.equal(['/room/1']);
        await until(() => pubs(follower).length === 4);
        expect(pubs(follower)[3].message).to.equal({ presence: 'diff', joins: [], updates: [], leaves: [id], anonymous: 0 });
        expect(await srv.presence.paths('jane')).to.equal([]);

        // An anonymous socket that authenticates is admitted as its user and joins (leaving the anonymous count)
        const anonymous = await peer(srv, undefined, ['/room/1', '/small']);
        await until(() => replay(pubs(follower).map((pub) => pub.message)).size === 0 && pubs(follower).at(-1).message.anonymous === 1);
        const kim = await peer(srv, { user: 'kim' }, ['/small']);
        expect((await reauth(anonymous, { user: 'ann', alias: 'A' })).statusCode).to.not.exist();
        await until(() => pubs(follower).at(-1).message.anonymous === 0);
        expect([...replay(pubs(follower).map((pub) => pub.message)).values()]).to.equal([{ alias: 'A' }]);
        expect(await srv.presence.members('/room/1')).to.equal([{ user: 'ann', info: { alias: 'A' }, sockets: 1 }]);

        // Credentials without a user, before and after: still counted, not listed
        const app = await peer(srv, { app: 'one' }, ['/room/1']);
        await until(() => pubs(follower).at(-1).message.anonymous === 1);
        expect((await reauth(app, { app: 'two' })).statusCode).to.not.exist();
        expect(await srv.presence.count('/room/1')).to.equal({ users: 1, sockets: 2, anonymous: 1 });
        app.close();
        await until(() => pubs(follower).at(-1).message.anonymous === 0);

        // ... but not where the path is full: that subscription is revoked, and nothing of it stays
        expect(anonymous.frames.map((frame) => JSON.parse(frame)).filter((frame) => frame.type === 'revoke').map((frame) => frame.path)).to.equal(['/small']);
        expect(await srv.presence.count('/small')).to.equal({ users: 1, sockets: 1, anonymous: 0 });

        // A socket gone while its info is computed again changes nothing
        const bob = await peer(srv, { user: 'bob', alias: 'B' }, ['/room/1']);
        await until(() => replay(pubs(follower).map((pub) => pub.message)).size === 2);
        bob.send({ type: 'reauth', id: 9, ...auth({ user: 'bob', alias: 'Bobby', slow: true }) });
        await wait(20);
        bob.close();
        await until(() => replay(pubs(follower).map((pub) => pub.message)).size === 1);
        const dan = await peer(srv, undefined, ['/room/1']);                  // anonymous, authenticates, gone meanwhile
        dan.send({ type: 'reauth', id: 9, ...auth({ user: 'dan', alias: 'D', slow: true }) });
        await wait(20);
        dan.close();
        await wait(150);
        expect(pubs(follower).flatMap((pub) => pub.message.updates ?? []).map((member: any) => member.info)).to.equal([{ alias: 'Johnny' }]);
        await eventually(async () => JSON.stringify(await srv.presence.count('/room/1')) === JSON.stringify({ users: 1, sockets: 1, anonymous: 0 }));
        expect(await srv.presence.paths('dan')).to.equal([]);

        for (const item of [follower, john, anonymous, kim]) {
            item.close();
        }

        await srv.stop();
    });

    it('writes the leaves of its sockets when the server stops', async () => {

        const broker = new MemoryBroker();
        const changes: PresenceEntry[] = [];
        const inner = broker.presence;
        const apply = inner.apply.bind(inner);
        inner.apply = (entries) => {

            changes.push(...entries);
            return apply(entries);
        };

        const srv = await start((s) => s.subscription('/room/{id}', { presence: room }), { broker });
        const john = await peer(srv, { user: 'john', alias: 'J' }, ['/room/1']);
        await until(() => changes.length === 1);
        await srv.stop();
        expect(changes).to.equal([
            { path: '/room/1', user: 'john', sockets: 1, info: '{"alias":"J"}' },
            { path: '/room/1', user: 'john', sockets: 0, info: '{"alias":"J"}' }
        ]);
        john.close();
    });

    describe('store faults', () => {

        // A memory broker whose presence store fails on demand, and whose deliveries can be dropped.
        const faulty = () => {

            const broker = new MemoryBroker();
            const inner = broker.presence;
            const faults = { apply: 0, admit: 0, members: 0, slow: null as Promise<void> | null, slowApply: null as Promise<void> | null, slowAdmit: null as Promise<void> | null, deaf: false, sink: null as BrokerSink | null };
            const unavailable = () => Promise.reject(Boom.serverUnavailable('Store unavailable'));
            const store: PresenceStore = {
                get secret() {

                    return inner.secret;
                },
                apply: async (entries, users) => {

                    await faults.slowApply;
                    return faults.apply-- > 0 ? unavailable() : inner.apply(entries, users);
                },
                admit: async (admissions) => {

                    await faults.slowAdmit;
                    return faults.admit-- > 0 ? unavailable() : inner.admit(admissions);
                },
                members: async (path) => {

                    await faults.slow;
                    return faults.members-- > 0 ? unavailable() : inner.members(path);
                },
                count: (path) => inner.count(path),
                paths: (user) => inner.paths(user),
                update: (path, user, info) => inner.update(path, user, info),
                cluster: () => inner.cluster()
            };

            Object.defineProperty(broker, 'presence', { value: store });
            const startBroker = broker.start.bind(broker);
            broker.start = (sink) => {

                faults.sink = sink;
                return startBroker({ ...sink, deliver: (envelope: PublishEnvelope) => (faults.deaf ? undefined : sink.deliver(envelope)) });
            };

            return { broker, inner, faults };
        };

        it('writes again after a failed write, refuses a follower (503) when the members cannot be read, and leaves nothing behind', async () => {

            const { broker, faults } = faulty();
            const srv = await start((s) => s.subscription('/room/{id}', { presence: room }), { broker });
            const errors = logged(srv, 'presence');

            faults.apply = 1;
            const john = await peer(srv, { user: 'john', alias: 'J' }, ['/room/1']);
            const anonymous = await peer(srv, undefined, ['/room/1']);            // written only by the batch
            await eventually(async () => (await srv.presence.count('/room/1')).anonymous === 1);
            expect(errors.length).to.equal(1);
            expect(await srv.presence.count('/room/1')).to.equal({ users: 1, sockets: 2, anonymous: 1 });

            faults.members = 1;
            const follower = await peer(srv);
            const refused = await follower.reply({ type: 'sub', id: 1, path: '/$presence/room/1' });
            expect(refused.statusCode).to.equal(503);
            expect(srv.pulseStats().topics).to.equal(1);

            // Gone while the members are read: nothing is kept
            let release!: () => void;
            faults.slow = new Promise((resolve) => {

                release = resolve;
            });

            const leaving = await peer(srv);
            leaving.send({ type: 'sub', id: 1, path: '/$presence/room/1' });
            await until(() => srv.pulseStats().topics === 2);
            leaving.close();
            await until(() => srv.pulseStats().topics === 1);
            release();
            faults.slow = null;
            await wait(50);
            expect(pubs(leaving)).to.equal([]);

            // Following works again; changes made while the members are read (and a reload asked meanwhile) arrive after the list
            faults.slow = new Promise((resolve) => {

                release = resolve;
            });

            follower.send({ type: 'sub', id: 2, path: '/$presence/room/1' });
            await until(() => srv.pulseStats().topics === 2);
            const jane = await peer(srv, { user: 'jane', alias: 'Ja' }, ['/room/1']);
            await eventually(async () => (await srv.presence.count('/room/1')).users === 2);
            faults.sink!.reloadPresence!();
            release();
            faults.slow = null;
            await until(() => pubs(follower).length >= 1);
            expect(pubs(follower)[0].message.presence).to.equal('list');
            await until(() => replay(pubs(follower).map((pub) => pub.message)).size === 2);

            for (const item of [john, anonymous, jane, follower]) {
                item.close();
            }

            await srv.stop();
        });

        it('reads followed paths again when the broker may have missed changes, and writes everything again when the store lost it', async () => {

            const { broker, inner, faults } = faulty();
            const srv = await start((s) => s.subscription('/room/{id}', { presence: room }), { broker });
            const follower = await peer(srv, undefined, ['/$presence/room/1']);
            await until(() => pubs(follower).length === 1);                       // the list, before any member
            const john = await peer(srv, { user: 'john', alias: 'J' }, ['/room/1']);
            await until(() => pubs(follower).length === 2);

            // Changes this node did not receive: a member written by another node, john gone from the store
            faults.deaf = true;
            await inner.apply([{ path: '/room/1', user: 'ghost', sockets: 1, info: '{"alias":"G"}' }, { path: '/room/1', user: 'john', sockets: 0, info: 'null' }]);
            faults.deaf = false;
            faults.sink!.reloadPresence!();
            await until(() => pubs(follower).length === 3);
            const diff = pubs(follower)[2].message;
            expect(diff.joins.map((member: any) => member.info)).to.equal([{ alias: 'G' }]);
            expect(diff.leaves.length).to.equal(1);

            // A read that fails keeps the members known (and the changes received during it), and tries again
            let release!: () => void;
            faults.slow = new Promise((resolve) => {

                release = resolve;
            });

            faults.members = 1;
            faults.sink!.reloadPresence!();
            await inner.apply([{ path: '/room/1', user: 'passer', sockets: 1, info: 'null' }]);
            release();
            faults.slow = null;
            await until(() => replay(pubs(follower).map((pub) => pub.message)).size === 2);
            await inner.apply([{ path: '/room/1', user: 'passer', sockets: 0, info: 'null' }]);
            await until(() => replay(pubs(follower).map((pub) => pub.message)).size === 1);

            // The store lost this node's entries: they are written again
            faults.sink!.resendPresence!();
            await until(() => replay(pubs(follower).map((pub) => pub.message)).size === 2);
            expect(await srv.presence.members('/room/1')).to.equal([{ user: 'ghost', info: { alias: 'G' }, sockets: 1 }, { user: 'john', info: { alias: 'J' }, sockets: 1 }]);
            expect(replay(pubs(follower).map((pub) => pub.message)).size).to.equal(2);

            john.close();
            follower.close();
            await srv.stop();
        });

        it('leaves no member behind when the socket is gone while admitted, or when the store fails during an admission', async () => {

            const { broker, faults } = faulty();
            const srv = await start((s) => s.subscription('/room/{id}', { presence: { interval: 10 } }), { broker });
            const errors = logged(srv, 'presence');
            const follower = await peer(srv, undefined, ['/$presence/room/1']);
            let release!: () => void;
            faults.slowAdmit = new Promise((resolve) => {

                release = resolve;
            });

            const gone = await peer(srv, { user: 'gone' });
            gone.send({ type: 'sub', id: 1, path: '/room/1' });
            gone.send({ type: 'sub', id: 2, path: '/room/2' });                // nobody else on it
            const stays = await peer(srv, { user: 'stays' });
            const staying = stays.reply({ type: 'sub', id: 1, path: '/room/1' });
            await wait(20);
            gone.close();
            await until(() => srv.pulseStats().sockets === 2);
            release();
            faults.slowAdmit = null;
            expect((await staying).statusCode).to.not.exist();

            // gone was admitted (stored) but never joined: the next write takes it out again
            await eventually(async () => JSON.stringify(await srv.presence.members('/room/1')) === JSON.stringify([{ user: 'stays', info: null, sockets: 1 }]));
            await eventually(async () => (await srv.presence.paths('gone')).length === 0);
            expect(await srv.presence.count('/room/2')).to.equal({ users: 0, sockets: 0, anonymous: 0 });

            // The store fails: the sub is refused (503, logged), and nothing of it stays
            faults.admit = 1;
            const failed = await peer(srv, { user: 'failed' });
            expect((await failed.reply({ type: 'sub', id: 1, path: '/room/1' })).statusCode).to.equal(503);
            expect(errors.length).to.equal(1);
            expect(srv.pulseStats().subscriptions).to.equal(2);
            expect(await srv.presence.count('/room/1')).to.equal({ users: 1, sockets: 1, anonymous: 0 });
            await until(() => replay(pubs(follower).map((pub) => pub.message)).size === 1);

            for (const item of [follower, stays, failed]) {
                item.close();
            }

            await srv.stop();
        });

        it('writes one batch at a time, keeps a member who came back during a write, and does not retry a failed write once stopped', async () => {

            const { broker, faults } = faulty();
            const srv = await start((s) => s.subscription('/room/{id}', { presence: { interval: 10 } }), { broker });
            const errors = logged(srv, 'presence');
            const john = await peer(srv, { user: 'john' }, ['/room/1']);
            await eventually(async () => (await srv.presence.count('/room/1')).users === 1);

            let release!: () => void;
            faults.slowApply = new Promise((resolve) => {

                release = resolve;
            });

            john.close();                                                     // its write waits
            await until(() => srv.pulseStats().sockets === 0);
            await wait(30);

            // Admissions wait for the write under way (this node's writes reach the store in order), then go together
            const joining = await Promise.all(['jane', 'jim', 'john'].map(async (user) => {

                const opened = await Peer.open(url(srv));
                opened.send({ type: 'hello', id: 1, version: '2', subs: ['/room/1'], ...auth({ user }) });
                return opened;
            }));

            await wait(30);
            expect(joining.map((item) => item.frames.length)).to.equal([0, 0, 0]);
            release();
            faults.slowApply = null;
            await until(() => joining.every((item) => item.frames.length === 1));
            expect(joining.map((item) => JSON.parse(item.frames[0]!).statusCode)).to.equal([undefined, undefined, undefined]);
            const [jane, jim, back] = joining as [Peer, Peer, Peer];
            back.close();                                                     // john came back during the write, and leaves again
            await until(() => srv.pulseStats().sockets === 2);
            await eventually(async () => (await srv.presence.count('/room/1')).users === 2);
            expect(await srv.presence.members('/room/1')).to.equal([{ user: 'jane', info: null, sockets: 1 }, { user: 'jim', info: null, sockets: 1 }]);

            // Stopping: the last write fails, is logged, and nothing is left scheduled
            faults.apply = 1;
            await srv.stop();
            expect(errors.length).to.equal(1);
            jane.close();
            jim.close();
        });
    });
});

// ---- The store, the same for every broker ----

export interface StoreFlavour {
    name: string;
    skip: boolean;
    make: () => Broker;
}

const recorder = (): BrokerSink & { changes: { path: string; change: PresenceChange }[] } => {

    const sink = {
        changes: [] as { path: string; change: PresenceChange }[],
        deliver: (envelope: PublishEnvelope) => {

            sink.changes.push({ path: envelope.path, change: envelope.message as PresenceChange });
        },
        broadcast: () => { },
        stats: () => ({ sockets: 3, users: 2 })
    };

    return sink;
};

export const storeConformance = (flavour: StoreFlavour): void => {

    describe(`${flavour.name} presence store`, { skip: flavour.skip }, () => {

        it('applies absolute counts, publishes joins, leaves and counts in order, and answers queries', async () => {

            const broker = flavour.make();
            const sink = recorder();
            await broker.start(sink);
            await broker.subscribe('/$presence/room');
            const store = broker.presence!;
            expect(store.secret).to.be.a.string();
            expect(store.secret.length).to.be.at.least(16);

            await store.apply([
                { path: '/room', user: 'john', sockets: 2, info: '{"alias":"J"}' },
                { path: '/room', user: '', sockets: 1, info: 'null' },
                { path: '/other', user: 'john', sockets: 1, info: 'null' }
            ]);

            const roomChanges = () => sink.changes.filter((item) => item.path === '/$presence/room').map((item) => item.change);
            await until(() => roomChanges().length === 1);
            const room = roomChanges()[0];
            expect(room).to.equal({ users: 1, sockets: 3, anonymous: 1, joins: [['john', '{"alias":"J"}']], leaves: [], updates: [] });
            expect(await store.count('/room')).to.equal({ users: 1, sockets: 3, anonymous: 1 });
            expect(await store.members('/room')).to.equal({ users: 1, sockets: 3, anonymous: 1, members: [{ user: 'john', info: '{"alias":"J"}', sockets: 2 }] });
            expect((await store.paths('john')).sort()).to.equal(['/other', '/room']);

            // The same counts again change nothing; another socket of a member changes only the count
            await store.apply([{ path: '/room', user: 'john', sockets: 2, info: 'null' }]);
            await store.apply([{ path: '/room', user: 'john', sockets: 3, info: 'null' }]);
            expect(await store.count('/room')).to.equal({ users: 1, sockets: 4, anonymous: 1 });
            expect(await store.members('/room')).to.equal({ users: 1, sockets: 4, anonymous: 1, members: [{ user: 'john', info: '{"alias":"J"}', sockets: 3 }] });

            // Info updates only for members
            expect(await store.update('/room', 'john', '{"alias":"Johnny"}')).to.be.true();
            expect(await store.update('/room', 'john', '{"alias":"Johnny"}')).to.be.true();
            expect(await store.update('/room', 'jane', '{}')).to.be.false();

            await store.apply([{ path: '/room', user: 'jane', sockets: 1, info: '{"alias":"Ja"}' }]);
            await store.apply([{ path: '/room', user: 'john', sockets: 0, info: 'null' }, { path: '/room', user: '', sockets: 0, info: 'null' }]);
            await until(() => roomChanges().length === 4);
            expect(roomChanges().slice(1)).to.equal([
                { users: 1, sockets: 4, anonymous: 1, joins: [], leaves: [], updates: [['john', '{"alias":"Johnny"}']] },
                { users: 2, sockets: 5, anonymous: 1, joins: [['jane', '{"alias":"Ja"}']], leaves: [], updates: [] },
                { users: 1, sockets: 1, anonymous: 0, joins: [], leaves: ['john'], updates: [] }
            ]);
            expect(await store.paths('john')).to.equal(['/other']);

            await store.apply([{ path: '/room', user: 'jane', sockets: 0, info: 'null' }, { path: '/other', user: 'john', sockets: 0, info: 'null' }]);
            expect(await store.count('/room')).to.equal({ users: 0, sockets: 0, anonymous: 0 });
            expect(await store.members('/room')).to.equal({ users: 0, sockets: 0, anonymous: 0, members: [] });
            expect(await store.paths('john')).to.equal([]);
            expect(await store.cluster()).to.equal({ nodes: 1, sockets: 3, users: 0 });

            await broker.stop();
        });

        it('counts the users of the nodes once each, and admits members up to a limit', async () => {

            const broker = flavour.make();
            const sink = recorder();
            await broker.start(sink);
            await broker.subscribe('/$presence/full');
            const store = broker.presence!;

            // Users: absolute, like the entries (the same twice changes nothing); sockets as the node reports them
            await store.apply([], [{ user: 'john', present: true }, { user: 'jane', present: true }]);
            await store.apply([], [{ user: 'john', present: true }]);
            expect(await store.cluster()).to.equal({ nodes: 1, sockets: 3, users: 2 });
            await store.apply([], [{ user: 'jane', present: false }, { user: 'jim', present: false }]);
            expect(await store.cluster()).to.equal({ nodes: 1, sockets: 3, users: 1 });

            // In order, each against what the ones before left: a, b in; c refused; a again (this node has it) in
            const admit = (user: string, info = 'null') => ({ path: '/full', user, info, max: 2 });
            expect(await store.admit([admit('a', '{"n":1}'), admit('b'), admit('c'), admit('a')])).to.equal([true, true, false, true]);
            expect(await store.members('/full')).to.equal({ users: 2, sockets: 2, anonymous: 0, members: [{ user: 'a', info: '{"n":1}', sockets: 1 }, { user: 'b', info: 'null', sockets: 1 }] });
            expect(await store.paths('c')).to.equal([]);
            const fullChanges = () => sink.changes.filter((item) => item.path === '/$presence/full').map((item) => item.change);
            await until(() => fullChanges().length >= 1);
            expect(fullChanges().flatMap((change) => change.joins)).to.equal([['a', '{"n":1}'], ['b', 'null']]);

            // An admission where this node has sockets of the user changes nothing; a leave makes room
            await store.apply([{ path: '/full', user: 'a', sockets: 3, info: 'null' }]);
            expect(await store.admit([admit('a')])).to.equal([true]);
            expect(await store.count('/full')).to.equal({ users: 2, sockets: 4, anonymous: 0 });
            await store.apply([{ path: '/full', user: 'a', sockets: 0, info: 'null' }]);
            expect(await store.admit([admit('c')])).to.equal([true]);
            expect(await store.admit([admit('a')])).to.equal([false]);
            expect((await store.members('/full')).members.map((member) => member.user).sort()).to.equal(['b', 'c']);

            await store.apply([{ path: '/full', user: 'b', sockets: 0, info: 'null' }, { path: '/full', user: 'c', sockets: 0, info: 'null' }], [{ user: 'john', present: false }]);
            expect(await store.count('/full')).to.equal({ users: 0, sockets: 0, anonymous: 0 });
            expect(await store.cluster()).to.equal({ nodes: 1, sockets: 3, users: 0 });
            await broker.stop();
        });
    });
};

storeConformance({ name: 'memory', skip: false, make: () => new MemoryBroker() });

// ---- Redis: the same store, then several nodes ----

const runPrefix = `pulse-test:presence:${process.pid}:${randomBytes(4).toString('hex')}:`;
let prefixes = 0;
const uniquePrefix = (): string => `${runPrefix}${++prefixes}:`;

skipWithoutRedis('Redis presence tests');
storeConformance({ name: 'redis', skip: !redisAvailable, make: () => new RedisBroker({ url: redisUrl, prefix: uniquePrefix() }) });

describe('presence across nodes over Redis', { skip: !redisAvailable }, () => {

    const admin = createClient({ url: redisUrl });

    lab.before(async () => {

        await admin.connect();
    });

    lab.after(async () => {

        await deleteRedisKeys(runPrefix, admin);
        admin.destroy();
    });

    const node = (prefix: string, setup: (srv: Hapi.Server) => void, lease = 1000, redis = redisUrl) => start(setup, { broker: new RedisBroker({ url: redis, prefix, timeout: 1000, presence: { lease } }) });

    it('shares members, counts, paths of users and info updates between nodes, and follows them on either node', { timeout: 20000 }, async () => {

        const prefix = uniquePrefix();
        const setup = (srv: Hapi.Server) => srv.subscription('/room/{id}', { presence: room });
        const a = await node(prefix, setup);
        const b = await node(prefix, setup);

        const onA = await nes(a);
        const got: any[] = [];
        await onA.subscribe('/$presence/room/1', (message) => got.push(message));
        const client = new Client(url(b));
        await client.connect();
        const onB = await client.followPresence<{ alias: string }>('/room/1');
        await until(() => got.length === 1 && onB.synced);

        const johnA = await nes(a, { user: 'john', alias: 'J' });
        await johnA.subscribe('/room/1', () => { });
        const johnB = await nes(b, { user: 'john', alias: 'J' });
        await johnB.subscribe('/room/1', () => { });
        const jane = await nes(b, { user: 'jane', alias: 'Ja' });
        await jane.subscribe('/room/1', () => { });
        const anonymous = await nes(a);
        await anonymous.subscribe('/room/1', () => { });

        await until(() => replay(got).size === 2 && onB.members.size === 2 && onB.anonymous === 1);
        expect([...replay(got).values()]).to.part.include([{ alias: 'J' }, { alias: 'Ja' }]);
        expect([...onB.members.keys()].sort()).to.equal([...replay(got).keys()].sort());        // one id per user on every node
        for (const srv of [a, b]) {
            expect(await srv.presence.count('/room/1')).to.equal({ users: 2, sockets: 4, anonymous: 1 });
            expect(await srv.presence.members('/room/1')).to.part.include([{ user: 'john', info: { alias: 'J' }, sockets: 2 }, { user: 'jane', info: { alias: 'Ja' }, sockets: 1 }]);
            expect(await srv.presence.paths('jane')).to.equal(['/room/1']);
        }

        // Sockets of every node; users once each, john on both nodes included
        await eventually(async () => JSON.stringify((await a.presence.stats()).cluster) === JSON.stringify({ nodes: 2, sockets: 6, users: 2 }));
        expect((await b.presence.stats()).node).to.equal({ sockets: 3, users: 2 });

        // john leaves node A only: still a member; an info update from B reaches A's follower
        await johnA.disconnect();
        expect(await b.presence.update('/room/1', 'jane', { alias: 'Janet' })).to.be.true();
        await until(() => [...replay(got).values()].some((info: any) => info.alias === 'Janet'));
        expect(replay(got).size).to.equal(2);
        expect(await a.presence.count('/room/1')).to.equal({ users: 2, sockets: 3, anonymous: 1 });

        await johnB.disconnect();
        await until(() => onB.members.size === 1);
        expect(await a.presence.paths('john')).to.equal([]);

        await Promise.all([onA, client, jane, anonymous].map((item) => item.disconnect()));
        await a.stop();
        await b.stop();
        expect(await admin.keys(`${prefix}P:n:*`)).to.equal([]);
        expect(await admin.keys(`${prefix}P:c:*`)).to.equal([]);
    });

    it('counts a member present on another node as in when a path is full, and starts again under a new name when its lease is gone', async () => {

        const prefix = uniquePrefix();
        const setup = (srv: Hapi.Server) => srv.subscription('/small', { presence: { maxMembers: 1, interval: 10 } });
        const a = await node(prefix, setup, 60000);          // renews every 20 s ± 20%: not during this test
        const b = await node(prefix, setup);
        const errors = logged(a, 'presence');
        const onA = await peer(a, { user: 'john' }, ['/small']);
        await eventually(async () => (await b.presence.count('/small')).users === 1);
        const onB = await peer(b, { user: 'john' });
        expect((await onB.reply({ type: 'sub', id: 1, path: '/small' })).statusCode).to.not.exist();
        const jane = await peer(b, { user: 'jane' });
        expect((await jane.reply({ type: 'sub', id: 1, path: '/small' })).statusCode).to.equal(429);

        const jim = await peer(a, { user: 'jim' });
        await eventually(async () => (await a.presence.stats()).cluster.users === 3);                    // every write done

        // Both nodes' leases and entries disappear (as if Redis lost them). Each node registers again when it finds
        // out and writes everything again: a at its next write (it does not renew during the test), b at its next
        // renewal (it has nothing to write).
        await admin.del([`${prefix}P:leases`, ...await admin.keys(`${prefix}P:n:*`), `${prefix}P:c:/small`, `${prefix}P:u:/small`, `${prefix}P:i:/small`, `${prefix}P:p:john`]);
        expect((await jim.reply({ type: 'sub', id: 1, path: '/small' })).statusCode).to.equal(503);     // found the lease gone
        await eventually(async () => (await a.presence.count('/small')).sockets === 2);                  // both nodes wrote john again
        expect(await a.presence.members('/small')).to.equal([{ user: 'john', info: null, sockets: 2 }]);
        expect((await jim.reply({ type: 'sub', id: 2, path: '/small' })).statusCode).to.equal(429);    // registered again: full again, exactly
        expect(errors.map((event) => event.error?.message)).to.include('Presence lease lost');

        for (const item of [onA, onB, jane, jim]) {
            item.close();
        }

        await a.stop();
        await b.stop();
    });

    it('finds at its next renewal that its lease is gone, while nobody writes, and starts again under a new name with its members', async () => {

        const prefix = uniquePrefix();
        const srv = await node(prefix, (s) => s.subscription('/room/{id}', { presence: room }));
        const leases = logged(srv, 'lease');
        const john = await peer(srv, { user: 'john', alias: 'J' }, ['/room/1']);
        await eventually(async () => JSON.stringify((await srv.presence.stats()).cluster) === JSON.stringify({ nodes: 1, sockets: 1, users: 1 }));
        const [before] = await admin.zRange(`${prefix}P:leases`, 0, -1);

        // Everything of this prefix disappears while no client does anything: only the renewal loop can notice
        await admin.del(await admin.keys(`${prefix}P:*`));
        await until(() => leases.length === 1, 2000);
        expect(leases[0].data).to.equal({ node: before });
        await eventually(async () => (await srv.presence.count('/room/1')).users === 1);
        expect(await srv.presence.members('/room/1')).to.equal([{ user: 'john', info: { alias: 'J' }, sockets: 1 }]);
        expect(await admin.zRange(`${prefix}P:leases`, 0, -1)).to.equal([`${before}.1`]);      // the same node, its next generation

        john.close();
        await srv.stop();
    });

    it('finds at its next write that its lease is gone, long before a renewal, and writes everything again under a new name', async () => {

        const prefix = uniquePrefix();
        const srv = await node(prefix, (s) => s.subscription('/room/{id}', { presence: room }), 60000);     // renews every 20 s ± 20%: not during this test
        const leases = logged(srv, 'lease');
        const john = await peer(srv, { user: 'john', alias: 'J' }, ['/room/1']);
        await eventually(async () => (await srv.presence.stats()).cluster.users === 1);         // (its socket count is written at renewals)
        const [before] = await admin.zRange(`${prefix}P:leases`, 0, -1);

        await admin.del(await admin.keys(`${prefix}P:*`));
        const jane = await peer(srv, { user: 'jane', alias: 'Ja' });              // a user, on no path: one write, no admission
        await until(() => leases.length === 1, 2000);
        expect(leases[0].data).to.equal({ node: before });
        await eventually(async () => JSON.stringify((await srv.presence.stats()).cluster) === JSON.stringify({ nodes: 1, sockets: 2, users: 2 }));
        expect(await srv.presence.members('/room/1')).to.equal([{ user: 'john', info: { alias: 'J' }, sockets: 1 }]);
        expect(await admin.zRange(`${prefix}P:leases`, 0, -1)).to.equal([`${before}.1`]);

        john.close();
        jane.close();
        await srv.stop();
    });

    it('sends the new info of a member that reauthenticates on one node to the followers on another', { timeout: 20000 }, async () => {

        const prefix = uniquePrefix();
        const setup = (srv: Hapi.Server) => srv.subscription('/room/{id}', { presence: room });
        const a = await node(prefix, setup);
        const b = await node(prefix, setup);
        const follower = await peer(a, undefined, ['/$presence/room/1']);
        await until(() => pubs(follower).length === 1);
        const john = await peer(b, { user: 'john', alias: 'J' }, ['/room/1']);
        await until(() => replay(pubs(follower).map((pub) => pub.message)).size === 1);
        expect((await john.reply({ type: 'reauth', id: 2, ...auth({ user: 'john', alias: 'Johnny' }) })).statusCode).to.not.exist();
        await until(() => ([...replay(pubs(follower).map((pub) => pub.message)).values()][0] as any)?.alias === 'Johnny');
        expect(await a.presence.members('/room/1')).to.equal([{ user: 'john', info: { alias: 'Johnny' }, sockets: 1 }]);

        follower.close();
        john.close();
        await a.stop();
        await b.stop();
    });

    it('admits members exactly up to maxMembers across nodes: users racing on two nodes for the last places never both get in', { timeout: 20000 }, async () => {

        const prefix = uniquePrefix();
        const setup = (srv: Hapi.Server) => srv.subscription('/small/{id}', { presence: { maxMembers: 3, interval: 1000 } });
        const a = await node(prefix, setup);
        const b = await node(prefix, setup);
        for (let round = 0; round < 5; ++round) {
            const path = `/small/${round}`;
            const racers = await Promise.all(['a1', 'a2', 'a3', 'b1', 'b2', 'b3'].map((user) => peer(user[0] === 'a' ? a : b, { user })));
            const replies = await Promise.all(racers.map((racer) => racer.reply({ type: 'sub', id: 1, path })));
            expect(replies.filter((reply) => !reply.statusCode).length).to.equal(3);
            expect(replies.filter((reply) => reply.statusCode).map((reply) => reply.statusCode)).to.equal([429, 429, 429]);
            expect(await a.presence.count(path)).to.equal({ users: 3, sockets: 3, anonymous: 0 });
            expect(a.pulseStats().subscriptions + b.pulseStats().subscriptions).to.equal(3);
            const admitted = racers.filter((_racer, i) => !replies[i].statusCode).map((racer) => racers.indexOf(racer));
            expect((await b.presence.members(path)).map((member) => member.user).sort()).to.equal(admitted.map((i) => ['a1', 'a2', 'a3', 'b1', 'b2', 'b3'][i]));
            racers.forEach((racer) => racer.close());
        }

        await a.stop();
        await b.stop();
    });

    it('fails to start without Redis, and stops cleanly', async () => {

        const broker = new RedisBroker({ url: 'redis://127.0.0.1:1', timeout: 200 });
        await expect(broker.start(recorder())).to.reject();
        await broker.stop();

        const plain = new RedisBroker({ url: redisUrl, prefix: uniquePrefix() });
        await plain.start({ deliver: () => { }, broadcast: () => { } });            // a sink without stats
        expect(await plain.presence.cluster()).to.equal({ nodes: 1, sockets: 0, users: 0 });
        await plain.stop();
        expect(() => new RedisBroker({ presence: { lease: 0 } })).to.throw('Invalid RedisBroker presence');
        expect(() => new RedisBroker({ presence: { lease: 1.5 } })).to.throw('Invalid RedisBroker presence');
        expect(() => new RedisBroker({ presence: null as any })).to.throw('Invalid RedisBroker presence');
        expect(() => new RedisBroker({ presence: 5 as any })).to.throw('Invalid RedisBroker presence');

        // Connected, but its presence store cannot start (a key of the wrong type where the secret goes): stopped again
        const prefix = uniquePrefix();
        await admin.hSet(`${prefix}P:secret`, 'not', 'a string');
        const blocked = new RedisBroker({ url: redisUrl, prefix });
        await expect(blocked.start(recorder())).to.reject();
        await blocked.stop();
    });

    it('sends nothing for a member who moves from one node to another within the interval', { timeout: 20000 }, async () => {

        const prefix = uniquePrefix();
        const setup = (srv: Hapi.Server) => {

            srv.subscription('/room/{id}', { presence: { interval: 1000 } });
            srv.subscription('/fast', { presence: { interval: 10 } });
        };

        const a = await node(prefix, setup);
        const b = await node(prefix, setup);
        const follower = await peer(a, undefined, ['/$presence/room/1']);
        await until(() => pubs(follower).length === 1);                       // the list, before any member
        const john = await peer(a, { user: 'john' }, ['/room/1']);
        await until(() => pubs(follower).length === 2);

        john.close();
        await until(() => a.pulseStats().sockets === 1);
        await wait(100);
        const moved = await peer(b, { user: 'john' }, ['/room/1']);
        await wait(1200);
        expect(pubs(follower).length).to.equal(2);
        expect(await a.presence.count('/room/1')).to.equal({ users: 1, sockets: 1, anonymous: 0 });

        follower.close();
        moved.close();
        await a.stop();
        await b.stop();
    });

    it('removes the members of a node killed without stopping within lease + lease/3', { timeout: 20000 }, async () => {

        const prefix = uniquePrefix();
        const lease = 1500;
        const a = await node(prefix, (srv) => srv.subscription('/room/{id}', { presence: { info: (credentials) => ({ alias: credentials.user }), interval: 20 } }), lease);
        const follower = await peer(a, undefined, ['/$presence/room/1']);
        await until(() => pubs(follower).length === 1);

        const child = fork(Path.join(__dirname, 'presence-node.js'), [JSON.stringify({ redis: redisUrl, prefix, lease })], { stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
        const port = await new Promise<number>((resolve) => child.once('message', (message: any) => resolve(message.port)));
        const doomed = await Promise.all(['ann', 'bob'].map(async (user) => {

            const opened = await Peer.open(`ws://127.0.0.1:${port}`);
            const reply = await opened.hello({ auth: { headers: { 'x-user': user } }, subs: ['/room/1'] });
            expect(reply.statusCode).to.not.exist();
            return opened;
        }));

        const survivor = await peer(a, { user: 'cy' }, ['/room/1']);
        await until(() => replay(pubs(follower).map((pub) => pub.message)).size === 3, 5000);
        expect((await a.presence.stats()).cluster.nodes).to.equal(2);
        await eventually(async () => (await a.presence.stats()).cluster.users === 3);

        const exited = new Promise((resolve) => child.once('exit', resolve));
        child.kill('SIGKILL');
        await exited;
        const killed = Date.now();
        await until(() => replay(pubs(follower).map((pub) => pub.message)).size === 1, 1.4 * lease + 5000, 'the leaves of the killed node');
        const took = Date.now() - killed;
        expect(took).to.be.at.most(1.4 * lease + 1500);                   // the bound, with room for a loaded machine
        expect(took).to.be.at.least(lease - 0.4 * lease);                 // not before the lease could have ended
        expect([...replay(pubs(follower).map((pub) => pub.message)).values()]).to.equal([{ alias: 'cy' }]);
        expect(await a.presence.count('/room/1')).to.equal({ users: 1, sockets: 1, anonymous: 0 });
        expect(await a.presence.paths('ann')).to.equal([]);
        expect((await a.presence.stats()).cluster.nodes).to.equal(1);
        await eventually(async () => (await a.presence.stats()).cluster.users === 1);          // its users go with its entries
        expect(await admin.hKeys(`${prefix}P:users`)).to.equal(['cy']);

        doomed.forEach((item) => item.close());
        survivor.close();
        follower.close();
        await a.stop();
    });

    it('survives a Redis restart: joins refused while it is down, members written and followed again after', { skip: !redisServerAvailable, timeout: 20000 }, async () => {

        const redis = await PrivateRedis.start();
        try {
            const prefix = uniquePrefix();
            const srv = await node(prefix, (s) => s.subscription('/room/{id}', { presence: room }), 1000, redis.url);
            const follower = await peer(srv, undefined, ['/$presence/room/1']);
            const john = await peer(srv, { user: 'john', alias: 'J' }, ['/room/1']);
            await until(() => replay(pubs(follower).map((pub) => pub.message)).size === 1);

            const errors = logged(srv, 'presence');
            await redis.kill();
            await until(() => errors.some((event) => event.tags.includes('renew')), 5000);     // the lease cannot be renewed
            const refused = await peer(srv, { user: 'jane', alias: 'Ja' });
            expect((await refused.reply({ type: 'sub', id: 1, path: '/room/1' }, 5000)).statusCode).to.equal(503);
            await expect(srv.presence.count('/room/1')).to.reject();

            await redis.restart();                                   // empty: every entry is gone
            await eventually(async () => {

                try {
                    return (await srv.presence.count('/room/1')).users === 1;
                }
                catch {
                    return false;
                }
            }, 10000);

            expect(await srv.presence.members('/room/1')).to.equal([{ user: 'john', info: { alias: 'J' }, sockets: 1 }]);
            await eventually(async () => (await srv.presence.stats()).cluster.users === 2);        // john, and jane (refused, still connected)
            await until(() => replay(pubs(follower).map((pub) => pub.message)).size === 1);     // the follower may have been told he left meanwhile
            expect([...replay(pubs(follower).map((pub) => pub.message)).values()]).to.equal([{ alias: 'J' }]);

            for (const item of [follower, john, refused]) {
                item.close();
            }

            await redis.kill();                                     // stopping without Redis: logged, bounded
            const count = errors.length;
            await srv.stop();
            expect(errors.length).to.be.above(count);
        }
        finally {
            await redis.kill();
        }
    });
});
