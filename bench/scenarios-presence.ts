// The presence scenarios (issue 15), hapi-pulse only, both over Redis (skipped without it), appended to the
// scenario and session lists of scenarios.ts:
//   presence-count      server.presence.count() on two paths of a store shared by two nodes, 1,000 and 10,000
//                       members, measured in alternating short windows so that both see the same machine: the ratio
//                       shows whether a count grows with the number of members.
//   presence-reconnect  N sockets of N users on one path dropped and opened again at once, on a node with presence
//                       on '/room/{id}' and on a node without it (the same server otherwise): server CPU per
//                       connection of both and their ratio, and the presence messages one follower got.
// Only types come from scenarios.ts (which imports this file).

import { nowMs } from './ipc';
import { redisCleanup, redisProblem, redisUrl, uniquePrefix } from './redis';
import type { Ctx, Scenario, Session, SessionKind } from './scenarios';
import { human } from './stats';

export function presenceSizes(quick: boolean) {

    const sockets = Number(process.env.BENCH_PRESENCE_SOCKETS);
    return {
        count: { members: [1000, 10_000] as const, rounds: quick ? 4 : 8, windowMs: quick ? 75 : 125, concurrency: 50 },
        reconnect: { sockets: sockets > 0 ? sockets : (quick ? 1000 : 5000), interval: 250, inflight: 100, cycles: quick ? 1 : 2 }
    };
}

interface Cpu { cpuUs: number; wallMs: number }
interface Counted { ops: number; ms: number; users: number }
interface Connected { connected: number; failed: number; firstError: string; ms: number }
interface Followed { messages: number; lists: number; joins: number; leaves: number; updates: number; members: number; anonymous: number; lastAt: number; armedAt: number; settled?: boolean }

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const rate = (v: number) => `${human(v)}/s`;
const ms = (v: number) => `${human(v)} ms`;
const count = (v: number) => human(v);
const times = (v: number) => (Number.isFinite(v) ? `${v.toFixed(2)}×` : '–');

const noRedis = async (): Promise<string | null> => {

    const problem = await redisProblem();
    return problem ? `skipped: no Redis at ${redisUrl} (${problem})` : null;
};

const countPath = (members: number) => `/room/m${members}`;
const reconnectPath = '/room/1';

// ---- Count ----

// Nodes A and B (RedisBroker, one prefix), '/room/{id}' with presence. Setup writes the members of both paths
// straight into the presence store, half of each path as A's and half as B's, then checks that both nodes count them.
const countSession: SessionKind = {
    id: 'presence-count',
    nodes: (ctx, state) => {

        const prefix = uniquePrefix();
        state.prefix = prefix;
        const node = { broker: 'redis' as const, url: redisUrl, prefix, presence: { on: true, interval: presenceSizes(ctx.quick).reconnect.interval } };
        return [node, node];
    },
    unavailable: noRedis,
    setup: async (ctx, s) => {

        const [a, b] = s.servers;
        for (const members of presenceSizes(ctx.quick).count.members) {
            const half = members / 2;
            await Promise.all([
                a!.call('presenceFill', { path: countPath(members), first: 0, count: half }, 60_000),
                b!.call('presenceFill', { path: countPath(members), first: half, count: members - half }, 60_000)
            ]);

            for (const node of [a!, b!]) {
                const got = await node.call<Counted>('presenceCount', { path: countPath(members), concurrency: 1, durationMs: 1 });
                if (got.users !== members) {
                    throw new Error(`presence count of ${countPath(members)}: ${got.users} users, ${members} written`);
                }
            }
        }
    },
    teardown: async (_ctx, s) => {

        if (typeof s.state.prefix === 'string') {
            await redisCleanup(s.state.prefix);
        }
    }
};

const countScenario: Scenario = {
    id: 'presence-count',
    title: 'Presence count on a path of two nodes (Redis), 1k and 10k members',
    describe: (quick) => {

        const c = presenceSizes(quick).count;
        return `Two hapi-pulse server processes (A and B) with \`RedisBroker\` on one Redis (${redisUrl}, a fresh key prefix per session, ` +
            'its keys deleted afterwards), `/room/{id}` declared with presence. Setup writes the members of `/room/m1000` and `/room/m10000` ' +
            'straight into the presence store (half as A\'s, half as B\'s; a count reads counters, so how members arrived does not matter to it) ' +
            'and checks that both nodes count them all. Then `server.presence.count(path)` in a loop, sequentially and ' +
            `${c.concurrency} at a time (after a warm-up), in ${c.rounds} rounds of one ${c.windowMs} ms window per path, alternating the order ` +
            'of the paths every round and the node every two (A, A, B, B, ...), so both paths see the same machine; count/s = counts / time over the windows. ' +
            '10k/1k = count/s at 10,000 members over count/s at 1,000 (about 1× when a count does not grow with the number of members).';
    },
    targets: ['pulse'],
    baselines: [],
    headline: { key: 'rate', label: `count/s, 10k members, ${presenceSizes(false).count.concurrency} in flight`, better: 'higher', format: rate },
    metrics: [
        { key: 'rate1k', label: '1k members', better: 'higher', format: rate },
        { key: 'ratio', label: '10k/1k', better: 'higher', format: times },
        { key: 'seq', label: 'sequential count/s, 10k', better: 'higher', format: rate },
        { key: 'seq1k', label: 'sequential, 1k', better: 'higher', format: rate },
        { key: 'seqRatio', label: 'sequential 10k/1k', better: 'higher', format: times }
    ],
    session: countSession,
    order: 1,
    run: async (ctx, s) => {

        const c = presenceSizes(ctx.quick).count;
        const [small, large] = c.members;
        const measure = async (concurrency: number, windowMs: number, rounds: number) => {

            const sum = new Map<number, { ops: number; ms: number }>(c.members.map((m) => [m, { ops: 0, ms: 0 }]));
            for (let round = 0; round < rounds; ++round) {
                const node = s.servers[(round >> 1) % 2]!;                                  // A, A, B, B, A, ...
                for (const members of round % 2 ? [...c.members].reverse() : c.members) {     // each node both orders
                    const got = await node.call<Counted>('presenceCount', { path: countPath(members), concurrency, durationMs: windowMs }, windowMs + 10_000);
                    if (got.users !== members) {
                        throw new Error(`presence count of ${countPath(members)}: ${got.users} users, ${members} written`);
                    }

                    const entry = sum.get(members)!;
                    entry.ops += got.ops;
                    entry.ms += got.ms;
                }
            }

            const at = (members: number) => sum.get(members)!.ops / (sum.get(members)!.ms / 1000);
            return { large: at(large), small: at(small) };
        };

        await measure(c.concurrency, 100, 4);                                              // warm-up
        const seq = await measure(1, c.windowMs, c.rounds);
        const par = await measure(c.concurrency, c.windowMs, c.rounds);
        return { rate: par.large, rate1k: par.small, ratio: par.large / par.small, seq: seq.large, seq1k: seq.small, seqRatio: seq.large / seq.small };
    }
};

// ---- Mass reconnection ----

// Node 0: '/room/{id}' without presence; node 1: with presence (each its own RedisBroker prefix). The follower of
// '/$presence/room/1' is on node 1 for the whole session.
const reconnectSession: SessionKind = {
    id: 'presence-reconnect',
    nodes: (ctx, state) => {

        const prefixes = [uniquePrefix(), uniquePrefix()];
        state.prefixes = prefixes;
        const interval = presenceSizes(ctx.quick).reconnect.interval;
        return prefixes.map((prefix, i) => ({ broker: 'redis' as const, url: redisUrl, prefix, presence: { on: i === 1, interval } }));
    },
    unavailable: noRedis,
    setup: async (_ctx, s) => {

        await s.client.call('presFollow', { port: s.ports[1], path: reconnectPath });
    },
    teardown: async (_ctx, s) => {

        for (const prefix of (s.state.prefixes as string[] | undefined) ?? []) {
            await redisCleanup(prefix);
        }
    }
};

async function connectUsers(ctx: Ctx, s: Session, node: number): Promise<void> {

    const r = presenceSizes(ctx.quick).reconnect;
    const got = await s.client.call<Connected>('presConnect', { port: s.ports[node], group: node, path: reconnectPath, count: r.sockets, inflight: r.inflight, timeoutMs: 15_000, totalTimeoutMs: 90_000 }, 120_000);
    if (got.failed) {
        throw new Error(`${got.failed} of ${r.sockets} presence sockets failed to connect (${got.firstError})`);
    }
}

const reconnectScenario: Scenario = {
    id: 'presence-reconnect',
    title: `Presence: mass reconnection of ${presenceSizes(false).reconnect.sockets.toLocaleString('en-US')} sockets on one path, presence on vs off`,
    describe: (quick) => {

        const r = presenceSizes(quick).reconnect;
        return 'Two hapi-pulse server processes, each with its own `RedisBroker` prefix and direct auth (each socket is user u<i>, given in its hello): ' +
            `one declares \`/room/{id}\` with presence (batch interval ${r.interval} ms), the other without it. On each, ${human(r.sockets)} sockets of ` +
            `${human(r.sockets)} users subscribe to \`${reconnectPath}\` in their hello (${r.inflight} setups in flight); once the follower lists them all, ` +
            `${r.cycles} reconnection(s) per node, alternating (presence on first): every socket of the node is dropped (client side, no close frame) ` +
            'and all are opened again at once, then the run waits until the follower lists every member again and has had no message for 2 ' +
            'intervals (without presence: as long as the presence node took after its reconnection). CPU/connection = the server process\'s CPU over ' +
            'that window / sockets, summed over the cycles (Redis\'s own CPU not counted); on/off = their ratio. One anonymous follower of ' +
            `\`/$presence${reconnectPath}\` on the presence node counts the messages it got in each window and the joins and leaves they carry ` +
            '(per reconnection); bound = ⌊(last message − first drop) / interval⌋ + 1, what "at most one message per batch interval" allows ' +
            '(a cycle over it, or a follower not listing every member at the end, is a FAIL in the targets table). Once per run (the cycles ' +
            'interleave on and off). BENCH_PRESENCE_SOCKETS sets the number of sockets.';
    },
    targets: ['pulse'],
    baselines: [],
    headline: { key: 'ratio', label: 'CPU/connection, presence on/off', better: 'lower', format: times },
    metrics: [
        { key: 'cpuOff', label: 'CPU/connection off', better: 'lower', format: ms },
        { key: 'cpuOn', label: 'CPU/connection on', better: 'lower', format: ms },
        { key: 'messages', label: 'presence messages/reconnection', better: 'lower', format: count },
        { key: 'bound', label: 'bound', better: 'higher', format: count },
        { key: 'changes', label: 'joins + leaves carried', better: 'lower', format: count },
        { key: 'overBound', label: 'cycles over the bound', better: 'lower', format: count },
        { key: 'missing', label: 'members missing at the end', better: 'lower', format: count },
        { key: 'reconnectOff', label: 'reconnection off', better: 'lower', format: ms },
        { key: 'reconnectOn', label: 'reconnection on', better: 'lower', format: ms }
    ],
    repeats: 1,
    session: reconnectSession,
    order: 1,
    run: async (ctx, s) => {

        const r = presenceSizes(ctx.quick).reconnect;
        const quietMs = 2 * r.interval;
        const [off, on] = s.servers as [Session['server'], Session['server']];

        // Both populations up, the follower listing every member of the presence node.
        await connectUsers(ctx, s, 1);
        const initial = await s.client.call<Followed>('presSettle', { members: r.sockets, quietMs, timeoutMs: 30_000 }, 35_000);
        if (!initial.settled) {
            throw new Error(`the follower lists ${initial.members} of ${r.sockets} members 30 s after they connected`);
        }

        await connectUsers(ctx, s, 0);
        await sleep(quietMs);

        const totals = { on: 0, off: 0, onMs: 0, offMs: 0, messages: 0, bound: 0, changes: 0, overBound: 0, missing: 0 };
        for (let cycle = 0; cycle < r.cycles; ++cycle) {
            // Presence on (node 1)
            await s.client.call('presArm');
            await on.call('cpuMark');
            const t0 = nowMs();
            await s.client.call('presDrop', { group: 1 });
            await connectUsers(ctx, s, 1);
            const reconnected = nowMs() - t0;
            const seen = await s.client.call<Followed>('presSettle', { members: r.sockets, quietMs, timeoutMs: 30_000 }, 35_000);
            const settleMs = nowMs() - t0 - reconnected;
            totals.on += (await on.call<Cpu>('cpuRead')).cpuUs;
            totals.onMs += reconnected;
            const bound = seen.messages ? Math.floor((seen.lastAt - t0) / r.interval) + 1 : 0;
            totals.messages += seen.messages;
            totals.bound += bound;
            totals.changes += seen.joins + seen.leaves;
            totals.overBound += seen.messages > bound ? 1 : 0;
            totals.missing = Math.max(totals.missing, r.sockets - seen.members);

            // Presence off (node 0), the same wait after the reconnection
            await off.call('cpuMark');
            const t1 = nowMs();
            await s.client.call('presDrop', { group: 0 });
            await connectUsers(ctx, s, 0);
            totals.offMs += nowMs() - t1;
            await sleep(settleMs);
            totals.off += (await off.call<Cpu>('cpuRead')).cpuUs;
        }

        const perConnection = (cpuUs: number) => cpuUs / 1000 / (r.sockets * r.cycles);
        return {
            ratio: totals.on / totals.off,
            cpuOff: perConnection(totals.off),
            cpuOn: perConnection(totals.on),
            messages: totals.messages / r.cycles,
            bound: totals.bound / r.cycles,
            changes: totals.changes / r.cycles,
            overBound: totals.overBound,
            missing: totals.missing,
            reconnectOff: totals.offMs / r.cycles,
            reconnectOn: totals.onMs / r.cycles
        };
    }
};

export const presenceSessions: readonly SessionKind[] = [countSession, reconnectSession];
export const presenceScenarios: readonly Scenario[] = [countScenario, reconnectScenario];
