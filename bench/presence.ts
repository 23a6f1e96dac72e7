// `node dist/bench/presence.js` (also `node dist/bench/run.js --only presence`): the presence figures of issue 15.
//
// 1. count: server.presence.count() on one path of a Redis store shared by two nodes, with 100, 1,000 and 10,000
//    members (half written by each node's store): operations per second, sequential and 50 at a time. The count is
//    one HMGET of counters the write scripts keep, so it should not move with the number of members.
// 2. reconnect: a server process (hapi-pulse, memory broker) with N sockets (default 5,000, BENCH_PRESENCE_SOCKETS) of
//    N distinct users on one path, and one follower of its presence. Every socket closes and connects again (hello
//    with auth and the sub). Reported: the server's CPU for the whole reconnection per connection, presence off and
//    on, their ratio, and the presence messages the follower received during it.
//
// Needs Redis for part 1 (REDIS_URL, default redis://127.0.0.1:6379; keys under a unique prefix, deleted after).

import { fork, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import Path from 'node:path';

import * as Boom from '@hapi/boom';
import * as Hapi from '@hapi/hapi';
import WebSocket from 'ws';

import * as Pulse from '../lib/index';
import { RedisBroker } from '../lib/redis';
import { redisCleanup, redisProblem, redisUrl } from './redis';

const sockets = Number(process.env.BENCH_PRESENCE_SOCKETS ?? 5000);

// ---- Server process ----

const serve = async (presence: boolean): Promise<void> => {

    const server = Hapi.server({ host: '127.0.0.1', port: 0 });
    server.auth.scheme('name', () => ({
        authenticate: (request: Hapi.Request, h: Hapi.ResponseToolkit) => {

            const user = request.headers['x-user'];
            if (typeof user !== 'string') {
                throw Boom.unauthorized(null, 'Name');
            }

            return h.authenticated({ credentials: { user } });
        }
    }));
    server.auth.strategy('name', 'name');
    await server.register({ plugin: Pulse.plugin, options: { auth: { type: 'direct', route: { strategy: 'name', mode: 'optional' } }, heartbeat: false } });
    server.subscription('/room/{id}', presence ? { presence: { info: (credentials) => ({ alias: credentials.user }) } } : {});
    await server.start();

    process.on('message', (message: string) => {

        if (message === 'cpu') {
            const { user, system } = process.cpuUsage();
            process.send!({ cpu: (user + system) / 1000, stats: server.pulseStats() });
        }
    });

    process.send!({ port: server.info.port });
};

// ---- Load ----

const open = (port: number, user: string | null, subs: string[]): Promise<WebSocket> => new Promise((resolve, reject) => {

    const ws = new WebSocket(`ws://127.0.0.1:${port}`, { perMessageDeflate: false });
    ws.once('error', reject);
    ws.once('open', () => ws.send(JSON.stringify({ type: 'hello', id: 1, version: '2', subs, ...(user ? { auth: { headers: { 'x-user': user } } } : {}) })));
    ws.once('message', (data) => {

        const reply = JSON.parse(data.toString());
        return reply.type === 'hello' && !reply.statusCode ? resolve(ws) : reject(new Error(data.toString()));
    });
});

const openAll = async (port: number, count: number): Promise<WebSocket[]> => {

    const all: WebSocket[] = [];
    const batch = 200;                                                   // connections opened at once
    for (let i = 0; i < count; i += batch) {
        all.push(...await Promise.all(Array.from({ length: Math.min(batch, count - i) }, (_, j) => open(port, `u${i + j}`, ['/room/1']))));
    }

    return all;
};

const closeAll = (all: WebSocket[]): Promise<void> => Promise.all(all.map((ws) => new Promise<void>((resolve) => {

    ws.once('close', () => resolve());
    ws.close();
}))).then(() => undefined);

const ask = (child: ChildProcess): Promise<{ cpu: number; stats: Pulse.PulseStats }> => new Promise((resolve) => {

    child.once('message', resolve as (message: unknown) => void);
    child.send('cpu');
});

const until = async (check: () => Promise<boolean>): Promise<void> => {

    while (!await check()) {
        await new Promise((resolve) => setTimeout(resolve, 20));
    }
};

const reconnect = async (presence: boolean): Promise<{ msPerConnection: number; messages: number; seconds: number }> => {

    const child = fork(__filename, ['serve', presence ? 'on' : 'off'], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    const { port } = await new Promise<{ port: number }>((resolve) => child.once('message', resolve as (message: unknown) => void));
    let messages = 0;
    const follower = presence ? await open(port, null, ['/$presence/room/1']) : null;
    follower?.on('message', () => ++messages);

    let all = await openAll(port, sockets);
    await new Promise((resolve) => setTimeout(resolve, 1000));          // the joins are written and sent
    const before = await ask(child);
    const received = messages;
    const started = Date.now();
    await closeAll(all);
    all = await openAll(port, sockets);
    await until(async () => (await ask(child)).stats.subscriptions === sockets + (presence ? 1 : 0));
    await new Promise((resolve) => setTimeout(resolve, 1000));          // the last batch
    const after = await ask(child);
    const seconds = (Date.now() - started) / 1000;

    await closeAll(all);
    follower?.close();
    child.kill();
    return { msPerConnection: (after.cpu - before.cpu) / sockets, messages: messages - received, seconds };
};

// ---- Count ----

const count = async (): Promise<string[]> => {

    const problem = await redisProblem();
    if (problem) {
        return [`count: skipped, Redis not available (${problem})`];
    }

    const prefix = `pulse-bench:presence:${process.pid}:${randomBytes(4).toString('hex')}:`;
    const sink = { deliver: () => { }, broadcast: () => { } };
    const nodes = [new RedisBroker({ url: redisUrl, prefix }), new RedisBroker({ url: redisUrl, prefix })];
    await Promise.all(nodes.map((node) => node.start(sink)));
    const lines: string[] = [];
    try {
        let members = 0;
        for (const target of [100, 1000, 10000]) {
            for (let batch = 0; members < target; ++batch) {
                const size = Math.min(500, target - members);
                const entries = Array.from({ length: size }, (_, i) => ({ path: '/room/1', user: `u${members + i}`, sockets: 1, info: '{"alias":"a"}' }));
                await nodes[batch % 2]!.presence.apply(entries);                  // the members come from both nodes
                members += size;
            }

            const store = nodes[0]!.presence;
            const measure = async (concurrency: number): Promise<number> => {

                const end = Date.now() + 2000;
                let done = 0;
                await Promise.all(Array.from({ length: concurrency }, async () => {

                    while (Date.now() < end) {
                        await store.count('/room/1');
                        ++done;
                    }
                }));

                return done / 2;
            };

            const users = (await store.count('/room/1')).users;
            lines.push(`count, ${users} members: ${Math.round(await measure(1))} ops/s sequential, ${Math.round(await measure(50))} ops/s 50 at a time`);
        }
    }
    finally {
        await Promise.all(nodes.map((node) => node.stop()));
        await redisCleanup(prefix);
    }

    return lines;
};

export const main = async (): Promise<void> => {

    for (const line of await count()) {
        console.log(line);
    }

    const off = await reconnect(false);
    const on = await reconnect(true);
    console.log(`reconnect of ${sockets} sockets, presence off: ${off.msPerConnection.toFixed(3)} ms CPU per connection (${off.seconds.toFixed(1)} s)`);
    console.log(`reconnect of ${sockets} sockets, presence on:  ${on.msPerConnection.toFixed(3)} ms CPU per connection (${on.seconds.toFixed(1)} s), ratio ${(on.msPerConnection / off.msPerConnection).toFixed(2)}x`);
    console.log(`presence messages received by the follower during the reconnection: ${on.messages}`);
};

if (require.main === module) {
    const [mode, flag] = process.argv.slice(2);
    const run = mode === 'serve' ? serve(flag === 'on') : main();
    run.catch((err) => {

        console.error(err);
        process.exit(1);
    });
}
