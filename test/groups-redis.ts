// Server-side subscriptions on two nodes over the real Redis (REDIS_URL), each run under its own key prefix:
// commands reach every node, recorded memberships are joined at hello on any node, queries are cluster-wide,
// multi-path publishes go once per socket, limits hold, and a Redis outage refuses with nothing half-applied.

import { randomBytes } from 'node:crypto';

import * as Code from '@hapi/code';
import type * as Hapi from '@hapi/hapi';
import * as Lab from '@hapi/lab';
import { createClient } from '@redis/client';

import { RedisBroker } from '../lib/redis';
import { deleteRedisKeys, Proxy, redisUrl, server, skipWithoutRedis, teardown, until, url, wait } from './helpers';
import { basic, clients, header } from './groups-clients';

const { expect } = Code;
const lab = Lab.script();
export { lab };
const { after, describe, it } = lab;
const defer = teardown(lab);

const skip = skipWithoutRedis('Redis server-side subscription tests');
const runPrefix = `pulse-test:groups:${process.pid}:${randomBytes(4).toString('hex')}:`;
let prefixes = 0;

after(async () => {

    if (skip) {
        return;
    }

    await deleteRedisKeys(runPrefix);
});


type Node = Hapi.Server & { logs: { tags: string[]; data: any }[]; prefix: string };

const prefixOf = (node: Node): string => node.prefix;

// Two (or more) nodes on one prefix; `redis(i)` gives node i's Redis URL (a proxy for outage tests).
const nodes = async (count: number, options: Record<string, unknown> = {}, redis: (i: number) => string = () => redisUrl): Promise<Node[]> => {

    const prefix = `${runPrefix}${++prefixes}:`;
    const list: Node[] = [];
    for (let i = 0; i < count; ++i) {
        const broker = new RedisBroker({ url: redis(i), prefix, timeout: 2000, client: { socket: { reconnectStrategy: () => 50 } } });
        const srv = await server({ auth: { type: 'direct', index: true }, broker, ...options }, 'pulse', basic) as Node;
        srv.logs = [];
        srv.prefix = prefix;
        srv.events.on('log', (event) => srv.logs.push({ tags: event.tags, data: event.data }));
        srv.subscription('/room/{id}', { history: { size: 50, ttl: 60000 } });
        await srv.start();
        defer(() => srv.stop({ timeout: 100 }));
        list.push(srv);
    }

    return list;
};

const { pulseClient, nesClient } = clients(defer);

describe('server-side subscriptions over Redis', { skip }, () => {

    it('subscribes and unsubscribes a user\'s sockets on every node; the stock nes client gets the revoke', async () => {

        const [a, b] = await nodes(2);
        const onB = await pulseClient(b!, 'john');
        const stockOnA = await nesClient(a!, 'john');
        const got: [unknown, unknown][] = [];
        await stockOnA.subscribe('/room/2', (message, flags) => got.push([message, flags]));

        await a!.subscribeUser('john', ['/room/1', '/room/2']);
        await until(() => onB.joinedPaths().length === 2, 5000, 'join on B');
        await b!.publish('/room/1', 'one');
        await a!.publish('/room/2', 'two');
        await until(() => onB.seen.filter(({ message }) => message !== undefined).length === 2 && got.length === 1, 5000, 'pubs');
        expect(got).to.equal([['two', {}]]);

        await b!.unsubscribeUser('john', ['/room/1', '/room/2'], { message: 'closed' });
        await until(() => got.length === 2 && onB.joinedPaths().length === 0, 5000, 'revokes');
        expect(got[1]).to.equal(['closed', { revoked: true }]);
        expect(stockOnA.subscriptions()).to.equal([]);
        expect(a!.pulseStats().subscriptions + b!.pulseStats().subscriptions).to.equal(0);
    });

    it('subscribes one socket by id on whichever node holds it', async () => {

        const [a, b] = await nodes(2);
        const onB = await pulseClient(b!, 'john');
        const other = await pulseClient(b!, 'john');
        await a!.subscribeSocket(onB.id!, '/room/9');
        await until(() => onB.joinedPaths().length === 1, 5000, 'join');
        await a!.unsubscribeSocket(onB.id!, '/room/9');
        await until(() => onB.joinedPaths().length === 0, 5000, 'leave');
        expect(other.seen).to.equal([]);
    });

    it('records memberships: a socket connecting later on another node joins at hello and recovers what it missed; queries are cluster-wide', async () => {

        const [a, b] = await nodes(2);
        await a!.subscribeUser('john', ['/room/1', '/room/2'], { persist: true });
        await a!.subscribeUser('jane', '/room/1', { persist: true, ttl: 60000 });
        expect((await b!.groupMembers('/room/1')).sort()).to.equal(['jane', 'john']);
        expect((await b!.userGroups('john')).sort()).to.equal(['/room/1', '/room/2']);

        const john = await pulseClient(b!, 'john', { recovery: true });
        expect(john.joinedPaths().sort()).to.equal(['/room/1', '/room/2']);
        await a!.publish('/room/1', 'first');
        await until(() => john.seen.length === 1, 5000, 'first');

        let reconnected = false;
        john.onConnect = () => (reconnected = true);
        await b!.eachSocket((socket) => socket.disconnect());
        await a!.publish('/room/1', 'missed');
        await a!.unsubscribeUser('john', '/room/2');
        await until(() => reconnected, 5000, 'reconnection');
        await until(() => john.seen.length === 2, 5000, 'replay');
        expect(john.seen.map(({ message, flags }) => [message, flags.path])).to.equal([['first', '/room/1'], ['missed', '/room/1']]);
        expect(john.joinedPaths()).to.equal(['/room/1']);
        expect(await a!.userGroups('john')).to.equal(['/room/1']);
    });

    it('ends a recorded membership after its ttl, and refuses one over maxSubscriptions (429, nothing recorded)', async () => {

        const [a, b] = await nodes(2, { limits: { maxSubscriptions: 2 } });
        await a!.subscribeUser('john', '/room/1', { persist: true, ttl: 100 });
        await a!.subscribeUser('john', '/room/2', { persist: true });
        await expect(b!.subscribeUser('john', '/room/3', { persist: true })).to.reject('Too many subscriptions');
        expect((await b!.userGroups('john')).sort()).to.equal(['/room/1', '/room/2']);
        await wait(150);
        expect(await b!.userGroups('john')).to.equal(['/room/2']);
        expect(await b!.groupMembers('/room/1')).to.equal([]);

        const admin = createClient({ url: redisUrl });                        // the ended membership is gone from both hashes
        await admin.connect();
        defer(() => admin.destroy());
        expect(await admin.hKeys(`${prefixOf(a!)}gu:john`)).to.equal(['/room/2']);
        expect(await admin.exists(`${prefixOf(a!)}gp:/room/1`)).to.equal(0);
        await b!.subscribeUser('john', '/room/3', { persist: true });          // room again
        expect((await a!.userGroups('john')).sort()).to.equal(['/room/2', '/room/3']);
        expect(b!.logs.filter(({ tags }) => tags.includes('subscribe')).map(({ data }) => data.error.output.statusCode)).to.equal([429]);
    });

    it('publishes to several paths once per socket across nodes, and once per path without once', async () => {

        const [a, b] = await nodes(2);
        const john = await pulseClient(b!, 'john');
        await a!.subscribeUser('john', ['/room/1', '/room/2']);
        await until(() => john.joinedPaths().length === 2, 5000, 'joins');
        john.seen.length = 0;

        await a!.publish(['/room/2', '/room/1'], 'once', { once: true });
        await a!.publish(['/room/1', '/room/2'], 'each');
        await until(() => john.seen.length === 3, 5000, 'pubs');
        await wait(50);
        expect(john.seen.map(({ message, flags }) => [message, flags.path]).sort()).to.equal([['each', '/room/1'], ['each', '/room/2'], ['once', '/room/2']]);
    });

    it('refuses a server-side subscribe while Redis is out of reach (503), with nothing recorded and no socket joined', async () => {

        const proxy = await Proxy.start(Number(new URL(redisUrl).port || 6379));
        defer(() => proxy.close());
        const [a, b] = await nodes(2, {}, (i) => (i === 0 ? proxy.url : redisUrl));
        const onA = await pulseClient(a!, 'john');
        const onB = await pulseClient(b!, 'john');

        proxy.cut();
        await expect(a!.subscribeUser('john', '/room/1', { persist: true })).to.reject(/unavailable|failed|did not answer/);
        await expect(a!.subscribeUser('john', '/room/1')).to.reject(/unavailable|failed|did not answer/);
        expect(a!.logs.some(({ tags, data }) => tags.includes('subscribe') && data.error.output?.statusCode === 503)).to.be.true();
        proxy.restore();

        expect(await b!.userGroups('john')).to.equal([]);
        await wait(100);
        expect(onA.joinedPaths()).to.equal([]);
        expect(onB.joinedPaths()).to.equal([]);
        let joined = false;
        for (let attempt = 0; attempt < 50 && !joined; ++attempt) {
            joined = await a!.subscribeUser('john', '/room/1', { persist: true }).then(() => true, () => false);
            await wait(joined ? 0 : 50);
        }

        expect(joined).to.be.true();
        await until(() => onA.joinedPaths().length === 1 && onB.joinedPaths().length === 1, 5000, 'joins');
    });

    it('a node cut from Redis catches up on recorded memberships when its subscription is back: joins the new, leaves the removed, keeps the client\'s own; what was not recorded stays missed', async () => {

        const proxy = await Proxy.start(Number(new URL(redisUrl).port || 6379));
        defer(() => proxy.close());
        const [a, b] = await nodes(2, {}, (i) => (i === 1 ? proxy.url : redisUrl));
        await a!.subscribeUser('john', '/room/2', { persist: true });
        await a!.subscribeUser('jane', '/room/5', { persist: true });
        const john = await pulseClient(b!, 'john');
        await john.subscribe('/room/3', () => { });                              // his own
        await a!.subscribeUser('john', '/room/3', { persist: true });            // recorded too: his own subscription holds it
        expect(john.joinedPaths()).to.equal(['/room/2']);

        proxy.cut();                                                            // b hears nothing of what follows
        await a!.subscribeUser('john', '/room/1', { persist: true });
        await a!.unsubscribeUser('john', ['/room/2', '/room/3']);
        await a!.subscribeUser('john', '/room/4');                              // not recorded
        const jane = await pulseClient(b!, 'jane');                             // her hello cannot read her memberships
        expect(jane.joinedPaths()).to.equal([]);
        expect(john.joinedPaths()).to.equal(['/room/2']);

        proxy.restore();
        await until(() => john.joinedPaths().join() === '/room/1' && jane.joinedPaths().join() === '/room/5', 10000, 'caught up');
        expect(john.seen.filter(({ flags }) => flags.revoked).map(({ flags }) => flags.path)).to.equal(['/room/2']);
        expect(john.subscriptions()).to.equal(['/room/3']);
        await a!.publish('/room/1', 'back');
        await until(() => john.seen.some(({ message }) => message === 'back'), 5000, 'publish');
    });
});
