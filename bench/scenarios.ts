// The scenario list. Each scenario is data: which targets it runs against, its headline metric (the one with ratio
// columns), its other metrics, and a run() that drives one server child and one load child through a Session and
// returns raw numbers for one repetition. Adding a scenario (a two-node run behind a Redis broker, a recovery
// run after a dropped connection, ...) is adding an entry here; Session is where a multi-node harness would grow
// (several server children sharing a broker) without touching the report code.

import Fs from 'node:fs';

import { nowMs, type Peer } from './ipc';
import { redisCleanup, redisProblem, redisUrl, uniquePrefix } from './redis';
import { presenceScenarios, presenceSessions } from './scenarios-presence';
import type { ServerOptions } from './servers/types';
import { human, median } from './stats';
import type { Target } from './targets';

export interface Session {
    readonly target: Target;
    readonly server: Peer;                                      // servers[0]
    readonly servers: readonly Peer[];                          // One per kind.nodes() entry
    readonly client: Peer;                                      // clients[0]
    readonly clients: readonly Peer[];                          // One per kind.loads() (default: one load process)
    readonly port: number;                                      // ports[0]
    readonly ports: readonly number[];
    readonly state: Record<string, unknown>;                   // Shared by the scenarios of one session
}

// Connecting thousands of sockets costs seconds per target and run, so scenarios that can share a population of
// sockets run in one session: the runner opens one server child and one load child per (repetition, kind, target),
// calls setup() once, then runs that kind's selected scenarios in `order`. A scenario that fails ends its session;
// the next one of the same kind gets a fresh session.
export interface SessionKind {
    readonly id: string;
    // Server children of the session: the `listen` options of each (default one, with default options). May keep
    // what teardown needs in `state`.
    nodes?(ctx: Ctx, state: Record<string, unknown>): ServerOptions[];
    // How many load processes (default 1): one process holds at most its open-file limit of sockets.
    loads?(ctx: Ctx): number;
    // Why this kind cannot run now (e.g. 'skipped: no Redis'), checked before each session; null when it can.
    unavailable?(ctx: Ctx): Promise<string | null>;
    setup(ctx: Ctx, session: Session): Promise<void>;
    // After every child of the session has stopped (also after a failed setup).
    teardown?(ctx: Ctx, session: Session): Promise<void>;
}

export interface Ctx {
    readonly quick: boolean;
    log(line: string): void;
}

export interface Metric {
    readonly key: string;
    readonly label: string;
    readonly better: 'higher' | 'lower';
    readonly format?: (value: number) => string;
}

export interface Scenario {
    readonly id: string;                                        // --only matches a prefix of this
    readonly title: string;
    readonly describe: (quick: boolean) => string;
    readonly targets: readonly string[];
    readonly baselines: readonly string[];                      // Ratio columns for the headline metric
    readonly headline: Metric;
    readonly metrics: readonly Metric[];
    readonly repeats?: number;                                  // At most this many repetitions
    readonly optIn?: boolean;                                   // Only run when --only names it (not in a full run)
    readonly session: SessionKind;
    readonly order: number;                                     // Position within its session
    run(ctx: Ctx, session: Session): Promise<Record<string, number>>;
}

// Sizes, full run vs --quick

export interface Sizes {
    small: number;                                              // Sockets in the 'small' session (1,000)
    large: number;                                              // Sockets in the 'large' session (5,000)
    fanout: { small: number; large: number };                   // Messages per fan-out burst
    messageBytes: number;
    deflate: { small: number; large: number };                  // Messages per compressed fan-out burst
    deflateBytes: number;
    targeted: { windowMs: number; batch: number; maxCount: number; warmup: number };
    storm: { publishes: number; capMs: number };
    request: { durationMs: number; warmupMs: number; sessionWarmup: { count: number; maxMs: number } };
    connect: { count: number; inflight: number };
    twoNode: { sockets: number; bursts: number; perBurst: number; warmup: number };
    recovery: { clients: number; rate: number; cycles: number; leadMs: number; pauseMs: number; liveMs: number; history: { size: number; ttl: number } };
    many: { perLoad: number; idleMs: number; heartbeat: { interval: number; timeout: number }; publishes: number };     // counts: manyCounts()
}

// The soft limit on open files of this process (the children inherit it); each socket is one file.
export function openFileLimit(): number {

    try {
        const line = Fs.readFileSync('/proc/self/limits', 'utf8').split('\n').find((l) => l.startsWith('Max open files'));
        const soft = Number(line?.split(/\s{2,}/)[1]);
        return Number.isFinite(soft) ? soft : 1024;
    }
    catch {
        return 1024;                                            // Not Linux: the usual default
    }
}

// The socket counts of the many scenario, smallest first. The largest is as many sockets as one server process
// may hold, leaving 500 files for everything else (the soft open-file limit: 20,000 → 19,500); the smaller one
// (5,000, or a quarter of the largest under 10,000 files; --quick: 500 and 2,000) shows whether a figure grows
// with N. BENCH_MANY_SOCKETS sets them: two counts ("5000,19500"), or one ("5000": that count only).
export function manyCounts(quick: boolean): number[] {

    const most = Math.max(100, openFileLimit() - 500);
    const asked = (process.env.BENCH_MANY_SOCKETS ?? '').split(',').map(Number).filter((n) => n > 0).map((n) => Math.min(most, Math.floor(n)));
    const largest = quick ? Math.min(most, 2000) : most;
    const counts = asked.length ? asked : [quick ? 500 : (most >= 10_000 ? 5000 : Math.round(most / 4)), largest];
    const sorted = [...new Set(counts)].sort((a, b) => a - b);
    return sorted.length > 2 ? [sorted[0]!, sorted[sorted.length - 1]!] : sorted;
}

// 'largest' is the many scenario itself, 'smaller' the same at the smaller count (none when only one is set).
type ManyAt = 'largest' | 'smaller';
const manyCount = (quick: boolean, at: ManyAt): number => {

    const counts = manyCounts(quick);
    return at === 'largest' ? counts[counts.length - 1]! : counts[0]!;
};

export function sizes(quick: boolean): Sizes {

    return quick ? {
        small: 500,
        large: 2000,
        fanout: { small: 40, large: 10 },
        messageBytes: 200,
        deflate: { small: 10, large: 4 },
        deflateBytes: 3 * 1024,
        targeted: { windowMs: 500, batch: 50, maxCount: 100_000, warmup: 100 },
        storm: { publishes: 2000, capMs: 5000 },
        request: { durationMs: 500, warmupMs: 200, sessionWarmup: { count: 500, maxMs: 1000 } },
        connect: { count: 300, inflight: 50 },
        twoNode: { sockets: 400, bursts: 2, perBurst: 10, warmup: 5 },
        recovery: { clients: 100, rate: 200, cycles: 1, leadMs: 400, pauseMs: 300, liveMs: 300, history: { size: 1000, ttl: 60_000 } },
        many: { perLoad: 1000, idleMs: 5_000, heartbeat: { interval: 2_000, timeout: 1_000 }, publishes: 3 }
    } : {
        small: 1000,
        large: 5000,
        fanout: { small: 100, large: 20 },
        messageBytes: 200,
        deflate: { small: 40, large: 10 },
        deflateBytes: 3 * 1024,
        targeted: { windowMs: 1500, batch: 50, maxCount: 200_000, warmup: 100 },
        storm: { publishes: 10_000, capMs: 20_000 },
        request: { durationMs: 1500, warmupMs: 300, sessionWarmup: { count: 4000, maxMs: 3000 } },
        connect: { count: 1000, inflight: 50 },
        twoNode: { sockets: 1000, bursts: 4, perBurst: 25, warmup: 10 },
        recovery: { clients: 200, rate: 200, cycles: 2, leadMs: 700, pauseMs: 500, liveMs: 500, history: { size: 1000, ttl: 60_000 } },
        many: { perLoad: 5000, idleMs: 60_000, heartbeat: { interval: 15_000, timeout: 5_000 }, publishes: 5 }
    };
}

// Shared result shapes (see load.ts and server-main.ts)

interface Connected { connected: number; failed: number; ms: number; clientCpuUs: number; firstError: string; setup: { p99: number; max: number } }
interface Published { t0: number; t1: number; published: number }
interface Delivered { delivered: number; bad: number; firstAt: number; lastAt: number; dropped: number; open: number; clientCpuUs: number; groups: Array<number | null>; bytes: number }
interface Latency { count: number; p50Ms: number; p99Ms: number; maxMs: number }
interface Resumed { resumed: number; failed: number; firstError: string; complete: boolean; helloMs: number; replayed: number; missedAtResume: number; windowMs: number; p50Ms: number; p99Ms: number; maxMs: number; notRecovered: number }
interface Checked { clients: number; received: number; lost: number; dup: number; clientsLost: number; clientsDup: number; unexpectedClose: number; notRecovered: number }
interface Cpu { cpuUs: number; wallMs: number }
interface Mem { heapUsed: number; rss: number; external: number; arrayBuffers: number }
interface Requests { count: number; errors: number; ms: number; p50Ms: number; p99Ms: number; clientCpuUs: number }

async function connect(s: Session, count: number, subs: 'fan' | 'item' | 'none', inflight = 100, node = 0, deflate = false): Promise<Connected> {

    const result = await s.client.call<Connected>('connect', { proto: s.target.proto, port: s.ports[node], group: node, count, inflight, subs, deflate, timeoutMs: 15_000, totalTimeoutMs: 90_000 }, 120_000);
    if (result.failed) {
        throw new Error(`${result.failed} of ${count} connections failed (${result.firstError})`);
    }

    return result;
}

async function ensureFan(s: Session): Promise<void> {

    if (!s.state.fan) {
        const result = await s.client.call<{ ms: number; failed: number }>('subscribeAll', { path: '/fan', inflight: 100 }, 120_000);
        if (result.failed) {
            throw new Error(`${result.failed} subscriptions to /fan failed`);
        }

        s.state.fan = true;
    }
}

// Each socket of the session on 3 of /multi/0 … /multi/9 (consecutive, so every path is shared with others).
async function ensureMulti(s: Session): Promise<void> {

    if (!s.state.multi) {
        const result = await s.client.call<{ ms: number; failed: number }>('subscribeAll', { path: '', spread: 10, per: 3, inflight: 100 }, 120_000);
        if (result.failed) {
            throw new Error(`${result.failed} subscriptions to /multi/* failed`);
        }

        s.state.multi = true;
    }
}

// Source addresses on the loopback (127.0.0.2, .3, ... on to 127.0.1.0 and so on), each handed out once per run. On
// the addresses a 19,500-socket session had just closed, the next session's 5,000 setups ran at 794-846/s (two runs),
// against 2,000-2,750/s on fresh ones and 2,700-2,800/s with no session before; 33,000 TIME_WAIT sockets on other
// addresses did not slow them, so it is the reuse of the addresses themselves.
let nextSourceAddress = 2;

function freshSourceAddress(): string {

    const n = nextSourceAddress++;
    return `127.${(n >> 16) & 255}.${(n >> 8) & 255}.${n & 255}`;
}

// As many sockets as the open-file limit allows (or the smaller count), each on its own /item/{i}, spread over load
// processes of at most `perLoad` sockets, each process from its own source address (its own ephemeral ports).
// Every target pings every heartbeat interval.
function manySessionKind(id: string, at: ManyAt): SessionKind {

    return {
        id,
        nodes: (ctx) => [{ heartbeat: sizes(ctx.quick).many.heartbeat }],
        loads: (ctx) => Math.ceil(manyCount(ctx.quick, at) / sizes(ctx.quick).many.perLoad),
        unavailable: async (ctx) => (at === 'smaller' && manyCounts(ctx.quick).length < 2 ? 'skipped: one socket count (BENCH_MANY_SOCKETS)' : null),
        setup: async (ctx, s) => {

            const n = manyCount(ctx.quick, at);
            s.state.memBefore = await s.server.call<Mem>('mem', { gc: true });
            const shares = s.clients.map((_, i) => Math.floor((n * (i + 1)) / s.clients.length) - Math.floor((n * i) / s.clients.length));
            const addresses = s.clients.map(freshSourceAddress);
            await s.server.call('cpuMark');
            const t0 = nowMs();
            const results = await Promise.all(s.clients.map((client, i) => client.call<Connected>('connect', {
                proto: s.target.proto, port: s.port, count: shares[i], inflight: 50, subs: 'item', first: Math.floor((n * i) / s.clients.length),
                localAddress: addresses[i], timeoutMs: 20_000, totalTimeoutMs: 150_000
            }, 180_000)));

            const failed = results.reduce((sum, r) => sum + r.failed, 0);
            if (failed) {
                throw new Error(`${failed} of ${n} connections failed (${results.find((r) => r.failed)!.firstError})`);
            }

            s.state.shares = shares;
            s.state.setupRate = n / ((nowMs() - t0) / 1000);
            s.state.setupCpu = (await s.server.call<Cpu>('cpuRead')).cpuUs / n;
            s.state.setupP99 = Math.max(...results.map((r) => r.setup.p99));
            s.state.setupMax = Math.max(...results.map((r) => r.setup.max));
        }
    };
}

// Sessions. Every socket of 'small' and 'large' subscribes to its own /item/{index} in its hello; fan-out scenarios
// add a '/fan' subscription to every socket when they start.

export const sessions: readonly SessionKind[] = [
    {
        id: 'small',
        setup: async (ctx, s) => {

            await connect(s, sizes(ctx.quick).small, 'item');
        }
    },
    {
        id: 'large',
        setup: async (ctx, s) => {

            s.state.memBefore = await s.server.call<Mem>('mem', { gc: true });
            s.state.connected = await connect(s, sizes(ctx.quick).large, 'item');
        }
    },
    {
        id: 'plain',
        setup: async (ctx, s) => {

            await connect(s, 32, 'none');
            // hapi's request path needs thousands of iterations before it is optimised: warm up by count, not time
            const w = sizes(ctx.quick).request.sessionWarmup;
            await s.client.call('requests', { concurrency: 32, durationMs: w.maxMs, maxCount: w.count }, w.maxMs + 20_000);
        }
    },
    {
        // Node A and node B: hapi-pulse with a RedisBroker on one Redis (a fresh key prefix per session, its keys
        // deleted afterwards); node S: hapi-pulse with the default memory broker, the single-node reference.
        // Sockets on '/fan': half of N on A (group 0), half on B (group 1), and N on S (group 2).
        id: 'nodes',
        nodes: (ctx, state) => {

            const prefix = uniquePrefix();
            state.prefix = prefix;
            return [{ broker: 'redis', url: redisUrl, prefix }, { broker: 'redis', url: redisUrl, prefix }, {}];
        },
        unavailable: async () => {

            const problem = await redisProblem();
            return problem ? `skipped: no Redis at ${redisUrl} (${problem})` : null;
        },
        setup: async (ctx, s) => {

            const n = sizes(ctx.quick).twoNode.sockets;
            await connect(s, n / 2, 'fan', 100, 0);
            await connect(s, n / 2, 'fan', 100, 1);
            await connect(s, n, 'fan', 100, 2);
        },
        teardown: async (_ctx, s) => {

            if (typeof s.state.prefix === 'string') {
                s.state.redisKeysDeleted = await redisCleanup(s.state.prefix);
            }
        }
    },
    {
        // One hapi-pulse node (memory broker) where '/rec/{id}' keeps history; K recovery clients on '/rec/shared'.
        id: 'recovery',
        nodes: (ctx) => [{ history: sizes(ctx.quick).recovery.history }],
        setup: async (ctx, s) => {

            const k = sizes(ctx.quick).recovery.clients;
            const result = await s.client.call<Connected>('recConnect', { port: s.port, path: recoveryPath, count: k, inflight: 50, timeoutMs: 10_000, totalTimeoutMs: 60_000 }, 70_000);
            if (result.failed) {
                throw new Error(`${result.failed} of ${k} recovery clients failed to connect (${result.firstError})`);
            }
        }
    },
    manySessionKind('many', 'largest'),
    {
        // Clients that offer permessage-deflate (as browsers and ws do), every socket on '/fan'.
        id: 'deflate-small',
        setup: async (ctx, s) => {

            await connect(s, sizes(ctx.quick).small, 'fan', 100, 0, true);
        }
    },
    {
        id: 'deflate-large',
        setup: async (ctx, s) => {

            await connect(s, sizes(ctx.quick).large, 'fan', 100, 0, true);
        }
    },
    manySessionKind('many-small', 'smaller'),
    ...presenceSessions                                         // scenarios-presence.ts (Redis)
];

const [small, large, plain, nodes, recoverySession, manySession, deflateSmall, deflateLarge] = sessions as [SessionKind, SessionKind, SessionKind, SessionKind, SessionKind, SessionKind, SessionKind, SessionKind];
const manySmallSession = sessions.find((kind) => kind.id === 'many-small')!;
const recoveryPath = '/rec/shared';
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

const rate = (v: number) => `${human(v)}/s`;
const ms = (v: number) => `${human(v)} ms`;
const us = (v: number) => `${human(v)} µs`;
const kb = (v: number) => `${(v / 1024).toFixed(1)} KB`;
const count = (v: number) => human(v);
const times = (v: number) => (Number.isFinite(v) ? `${v.toFixed(2)}×` : '–');

const all = ['pulse', 'nes', 'socketio', 'ws-string', 'ws-preframed'];
const noPreframed = ['pulse', 'nes', 'socketio', 'ws-string'];              // Pre-framing only changes publish

function fanout(kind: 'small' | 'large', label: string): Scenario {

    return {
        id: `fanout-${label}`,
        title: `Fan-out, ${label} subscribers on one path`,
        describe: (quick) => {

            const sz = sizes(quick);
            return `${sz[kind]} sockets subscribed to \`/fan\`; the server publishes a burst of ${sz.fanout[kind]} messages of ` +
                `${sz.messageBytes} B in one synchronous loop (after a 10-message warm-up). delivered/s = deliveries / (last delivery − first publish).`;
        },
        targets: all,
        baselines: ['nes', 'socketio', 'ws-string', 'ws-preframed'],
        headline: { key: 'rate', label: 'delivered/s', better: 'higher', format: rate },
        metrics: [
            { key: 'lastMs', label: 'last delivery', better: 'lower', format: ms },
            { key: 'serverCpuUs', label: 'server CPU/delivery', better: 'lower', format: us },
            { key: 'clientCpuUs', label: 'client CPU/delivery', better: 'lower', format: us },
            { key: 'lost', label: 'lost', better: 'lower', format: count }
        ],
        session: kind === 'small' ? small : large,
        order: 3,
        run: async (ctx, s) => {

            const sz = sizes(ctx.quick);
            const sockets = sz[kind];
            const messages = sz.fanout[kind];
            const size = sz.messageBytes;
            await ensureFan(s);

            await s.client.call('arm', { mode: 'fan' });                                   // Warm-up
            await s.server.call('fanout', { path: '/fan', count: 10, size });
            await s.client.call('wait', { total: sockets * 10, timeoutMs: 30_000 }, 35_000);

            const expected = sockets * messages;
            await s.client.call('arm', { mode: 'fan' });
            await s.server.call('cpuMark');
            const pub = await s.server.call<Published>('fanout', { path: '/fan', count: messages, size, seqBase: 1000 }, 60_000);
            const got = await s.client.call<Delivered>('wait', { total: expected, timeoutMs: 60_000 }, 65_000);
            const cpu = await s.server.call<Cpu>('cpuRead');
            if (got.bad) {
                throw new Error(`${got.bad} fan-out messages out of order`);
            }

            return {
                rate: got.delivered / ((got.lastAt - pub.t0) / 1000),
                lastMs: got.lastAt - pub.t0,
                serverCpuUs: cpu.cpuUs / got.delivered,
                clientCpuUs: got.clientCpuUs / got.delivered,
                lost: expected - got.delivered
            };
        }
    };
}

// The same burst with a realistic JSON message of a few KB, to clients that offer permessage-deflate: hapi-pulse with
// compression on (once per publish), off, and socket.io compressing per socket (ws's permessage-deflate).
function compressed(kind: 'small' | 'large', label: string): Scenario {

    return {
        id: `deflate-${label}`,
        title: `Compressed fan-out, ${label} subscribers, ${sizes(false).deflateBytes / 1024} KB JSON`,
        describe: (quick) => {

            const sz = sizes(quick);
            return `${sz[kind]} sockets that offer permessage-deflate, subscribed to \`/fan\`; the server publishes a burst of ${sz.deflate[kind]} ` +
                `catalogue-page JSON messages of ${(sz.deflateBytes / 1024).toFixed(0)} KB (bench/messages.ts) in one synchronous loop, after a 5-message warm-up. ` +
                'bytes/delivery = bytes the clients read from their TCP sockets (frame headers included) / deliveries. ' +
                'Socket 0 inflates and checks every message. Against hapi-pulse the others count compressed frames without inflating them ' +
                '(real clients inflate on their own CPUs; one load process inflating for thousands measures itself); socket.io compresses ' +
                'with context takeover, so its clients must inflate everything (see load.ts).';
        },
        targets: ['pulse-deflate', 'pulse', 'socketio-deflate'],
        baselines: ['pulse', 'socketio-deflate'],
        headline: { key: 'rate', label: 'delivered/s', better: 'higher', format: rate },
        metrics: [
            { key: 'bytes', label: 'bytes/delivery', better: 'lower', format: count },
            { key: 'serverCpuUs', label: 'server CPU/delivery', better: 'lower', format: us },
            { key: 'clientCpuUs', label: 'client CPU/delivery', better: 'lower', format: us },
            { key: 'lastMs', label: 'last delivery', better: 'lower', format: ms },
            { key: 'lost', label: 'lost', better: 'lower', format: count }
        ],
        session: kind === 'small' ? deflateSmall : deflateLarge,
        order: 1,
        run: async (ctx, s) => {

            const sz = sizes(ctx.quick);
            const sockets = sz[kind];
            const messages = sz.deflate[kind];
            const size = sz.deflateBytes;

            await s.client.call('arm', { mode: 'fan' });                                   // Warm-up
            await s.server.call('fanout', { path: '/fan', count: 5, size, shape: 'catalogue' });
            await s.client.call('wait', { total: sockets * 5, timeoutMs: 60_000 }, 65_000);

            const expected = sockets * messages;
            await s.client.call('arm', { mode: 'fan' });
            await s.server.call('cpuMark');
            const pub = await s.server.call<Published>('fanout', { path: '/fan', count: messages, size, shape: 'catalogue', seqBase: 1000 }, 60_000);
            const got = await s.client.call<Delivered>('wait', { total: expected, timeoutMs: 90_000 }, 95_000);
            const cpu = await s.server.call<Cpu>('cpuRead');
            if (got.bad) {
                throw new Error(`${got.bad} fan-out messages out of order`);
            }

            return {
                rate: got.delivered / ((got.lastAt - pub.t0) / 1000),
                bytes: got.bytes / got.delivered,
                lastMs: got.lastAt - pub.t0,
                serverCpuUs: cpu.cpuUs / got.delivered,
                clientCpuUs: got.clientCpuUs / got.delivered,
                lost: expected - got.delivered
            };
        }
    };
}

// hapi-pulse only: server.publish(paths, message, { once: true }) to 10 paths, each socket on 3 of them, beside a
// burst of the same size to one path every socket holds.
const multiPath: Scenario = {
    id: 'multi-path-1k',
    title: 'Publish to 10 paths once per socket, 1k sockets each on 3 of them',
    describe: (quick) => {

        const sz = sizes(quick);
        return `${sz.small} sockets, socket i subscribed to \`/multi/i % 10\` and the next two; the server publishes a burst of ${sz.fanout.small} ` +
            `messages of ${sz.messageBytes} B, each with \`server.publish([10 paths], message, { once: true })\` (one delivery per socket), then ` +
            'the same burst to `/fan`, which every socket holds (single path). delivered/s = deliveries / (last delivery − first publish).';
    },
    targets: ['pulse'],
    baselines: [],
    headline: { key: 'rate', label: 'delivered/s (10 paths, once)', better: 'higher', format: rate },
    metrics: [
        { key: 'serverCpuUs', label: 'server CPU/delivery', better: 'lower', format: us },
        { key: 'singleRate', label: 'delivered/s (1 path)', better: 'higher', format: rate },
        { key: 'singleCpuUs', label: 'server CPU/delivery (1 path)', better: 'lower', format: us },
        { key: 'lost', label: 'lost', better: 'lower', format: count }
    ],
    session: small,
    order: 4,
    run: async (ctx, s) => {

        const sz = sizes(ctx.quick);
        const sockets = sz.small;
        const messages = sz.fanout.small;
        const size = sz.messageBytes;
        const paths = Array.from({ length: 10 }, (_, i) => `/multi/${i}`);
        await ensureFan(s);
        await ensureMulti(s);

        const burst = async (op: 'fanout' | 'fanoutOnce', count: number, seqBase: number) => {

            const expected = sockets * count;
            await s.client.call('arm', { mode: 'fan' });
            await s.server.call('cpuMark');
            const pub = await s.server.call<Published>(op, { path: '/fan', paths, count, size, seqBase }, 60_000);
            const got = await s.client.call<Delivered>('wait', { total: expected, timeoutMs: 60_000 }, 65_000);
            const cpu = await s.server.call<Cpu>('cpuRead');
            if (got.bad) {
                throw new Error(`${got.bad} messages out of order`);
            }

            return { rate: got.delivered / ((got.lastAt - pub.t0) / 1000), cpuUs: cpu.cpuUs / got.delivered, lost: expected - got.delivered };
        };

        await burst('fanoutOnce', 10, 0);                                             // warm-up, both ways
        await burst('fanout', 10, 100);
        const once = await burst('fanoutOnce', messages, 1000);
        const single = await burst('fanout', messages, 5000);
        return { rate: once.rate, serverCpuUs: once.cpuUs, singleRate: single.rate, singleCpuUs: single.cpuUs, lost: once.lost + single.lost };
    }
};

function targeted(kind: 'small' | 'large', label: string): Scenario {

    return {
        id: `targeted-${label}`,
        title: `Targeted, ${label} sockets each on its own /item/{id}`,
        describe: (quick) => {

            const sz = sizes(quick);
            const t = sz.targeted;
            return `${sz[kind]} sockets, socket i subscribed to \`/item/i\`; the server publishes ${sz.messageBytes} B messages to random ids, ` +
                `${t.batch} per event-loop turn, for ${t.windowMs} ms (at most ${human(t.maxCount)}), after ${t.warmup} warm-up publishes. ` +
                'publishes/s = publishes / (last delivery − first publish).';
        },
        targets: all,
        baselines: ['nes', 'socketio', 'ws-string', 'ws-preframed'],
        headline: { key: 'rate', label: 'publishes/s', better: 'higher', format: rate },
        metrics: [
            { key: 'published', label: 'publishes', better: 'higher', format: count },
            { key: 'serverCpuUs', label: 'server CPU/publish', better: 'lower', format: us },
            { key: 'lost', label: 'lost', better: 'lower', format: count }
        ],
        session: kind === 'small' ? small : large,
        order: 2,
        run: async (ctx, s) => {

            const sz = sizes(ctx.quick);
            const t = sz.targeted;
            const sockets = sz[kind];
            const size = sz.messageBytes;

            await s.client.call('arm', { mode: 'item' });                                  // Warm-up
            const warm = await s.server.call<Published>('targeted', { ids: sockets, size, batch: t.batch, maxCount: t.warmup, durationMs: 10_000 }, 30_000);
            await s.client.call('wait', { total: warm.published, timeoutMs: 30_000 }, 35_000);

            await s.client.call('arm', { mode: 'item' });
            await s.server.call('cpuMark');
            const pub = await s.server.call<Published>('targeted', { ids: sockets, size, batch: t.batch, maxCount: t.maxCount, durationMs: t.windowMs }, t.windowMs + 30_000);
            const got = await s.client.call<Delivered>('wait', { total: pub.published, timeoutMs: 30_000 }, 35_000);
            const cpu = await s.server.call<Cpu>('cpuRead');
            if (got.bad) {
                throw new Error(`${got.bad} targeted messages reached the wrong socket`);
            }

            return {
                rate: pub.published / ((got.lastAt - pub.t0) / 1000),
                published: pub.published,
                serverCpuUs: cpu.cpuUs / pub.published,
                lost: pub.published - got.delivered
            };
        }
    };
}


// Two-node fan-out: publish bursts on one node, count deliveries on every group of sockets, take the latency from
// the `t` stamp in each message (server nowMs() just before publish(), client nowMs() on receipt: one machine-wide
// monotonic clock, ns resolution; what limits it is event-loop batching, i.e. tens of µs).

interface FanMeasure { rate: number; p50: number; p99: number; cpuUs: number[]; delivered: number; expected: number }

async function fanBursts(ctx: Ctx, s: Session, publisher: Peer, measured: Array<{ node: Peer; group: number }>, perMessage: number, seqBase: number): Promise<FanMeasure> {

    const z = sizes(ctx.quick).twoNode;
    const size = sizes(ctx.quick).messageBytes;
    for (let round = 0; ; ++round) {                                                  // Warm-up, at most 3 rounds
        await s.client.call('arm', { mode: 'fan' });
        await publisher.call('fanout', { path: '/fan', count: z.warmup, size, seqBase, stamp: true });
        const got = await s.client.call<Delivered>('wait', { total: perMessage * z.warmup, timeoutMs: 10_000 }, 15_000);
        if (got.delivered >= perMessage * z.warmup) {
            break;
        }

        if (round === 2) {
            throw new Error(`warm-up: ${got.delivered} of ${perMessage * z.warmup} deliveries after 3 rounds`);
        }

        await sleep(200);
    }

    await Promise.all(measured.map((m) => m.node.call('cpuMark')));
    let delivered = 0;
    let activeMs = 0;
    const byGroup = measured.map(() => 0);
    for (let burst = 0; burst < z.bursts; ++burst) {
        await s.client.call('arm', { mode: 'fan', latency: burst ? 'keep' : 'reset' });
        const pub = await publisher.call<Published>('fanout', { path: '/fan', count: z.perBurst, size, seqBase: seqBase + 1000 * (burst + 1), stamp: true }, 60_000);
        const got = await s.client.call<Delivered>('wait', { total: perMessage * z.perBurst, timeoutMs: 30_000 }, 35_000);
        if (got.bad) {
            throw new Error(`${got.bad} fan-out messages out of order`);
        }

        delivered += got.delivered;
        activeMs += got.lastAt - pub.t0;
        measured.forEach((m, i) => (byGroup[i] = byGroup[i]! + (got.groups[m.group] ?? 0)));
    }

    const cpu = await Promise.all(measured.map((m) => m.node.call<Cpu>('cpuRead')));
    const lat = await s.client.call<Latency>('latency');
    return {
        rate: delivered / (activeMs / 1000),
        p50: lat.p50Ms,
        p99: lat.p99Ms,
        cpuUs: cpu.map((c, i) => c.cpuUs / byGroup[i]!),
        delivered,
        expected: perMessage * z.perBurst * z.bursts
    };
}

const twoNode: Scenario = {
    id: 'two-node',
    title: 'Two nodes behind a Redis broker, fan-out on one path',
    describe: (quick) => {

        const z = sizes(quick).twoNode;
        return `Two hapi-pulse server processes (A and B) with \`RedisBroker\` on one Redis (${redisUrl}, a fresh key prefix per session, ` +
            `its keys deleted afterwards); ${z.sockets} sockets on \`/fan\`, ${z.sockets / 2} on A and ${z.sockets / 2} on B. Node A publishes ` +
            `${z.bursts} bursts of ${z.perBurst} messages of ${sizes(quick).messageBytes} B (one synchronous loop each, waiting for every delivery between bursts, ` +
            `after a ${z.warmup}-message warm-up). Single node: a third process with the default memory broker and its own ${z.sockets} sockets, ` +
            'same bursts, same session. delivered/s = deliveries / Σ (last delivery − first publish) over the bursts; p50/p99 = publish-to-delivery ' +
            'latency of every delivery (the publisher stamps `nowMs()`, the machine-wide monotonic clock, just before each publish; the client reads ' +
            'it on receipt), so within a burst it includes queueing behind the earlier messages. CPU/delivery per node = that process\'s CPU over the ' +
            'bursts / deliveries to its own sockets (A\'s includes publishing into Redis; Redis\'s own CPU is not counted). Skipped with a ' +
            '"skipped: no Redis" line when Redis does not answer PING.';
    },
    targets: ['pulse'],
    baselines: [],
    headline: { key: 'rate', label: '2 nodes delivered/s', better: 'higher', format: rate },
    metrics: [
        { key: 'p50', label: 'p50', better: 'lower', format: ms },
        { key: 'p99', label: 'p99', better: 'lower', format: ms },
        { key: 'cpuA', label: 'CPU/delivery A', better: 'lower', format: us },
        { key: 'cpuB', label: 'CPU/delivery B', better: 'lower', format: us },
        { key: 'singleRate', label: '1 node delivered/s', better: 'higher', format: rate },
        { key: 'singleP50', label: '1 node p50', better: 'lower', format: ms },
        { key: 'singleP99', label: '1 node p99', better: 'lower', format: ms },
        { key: 'singleCpu', label: '1 node CPU/delivery', better: 'lower', format: us },
        { key: 'vsSingle', label: '2 nodes / 1 node', better: 'higher', format: times },
        { key: 'lost', label: 'lost', better: 'lower', format: count }
    ],
    session: nodes,
    order: 1,
    run: async (ctx, s) => {

        const n = sizes(ctx.quick).twoNode.sockets;
        const [a, b, single] = s.servers as [Peer, Peer, Peer];
        const one = await fanBursts(ctx, s, single, [{ node: single, group: 2 }], n, 0);
        const two = await fanBursts(ctx, s, a, [{ node: a, group: 0 }, { node: b, group: 1 }], n, 0);
        const { errors } = await a.call<{ errors: number }>('publishErrors');
        if (errors) {
            ctx.log(`    two-node: ${errors} publishes rejected by the Redis broker`);
        }

        return {
            rate: two.rate,
            p50: two.p50,
            p99: two.p99,
            cpuA: two.cpuUs[0]!,
            cpuB: two.cpuUs[1]!,
            singleRate: one.rate,
            singleP50: one.p50,
            singleP99: one.p99,
            singleCpu: one.cpuUs[0]!,
            vsSingle: two.rate / one.rate,
            lost: two.expected - two.delivered + (one.expected - one.delivered)
        };
    }
};

// Recovery: K clients on one history path while the node publishes at a steady rate; every cycle drops all of
// them (client-side close), waits, and reconnects them all at once with their last positions.

const recovery: Scenario = {
    id: 'recovery',
    title: 'Recovery: clients drop and resume with their positions',
    describe: (quick) => {

        const r = sizes(quick).recovery;
        return `One hapi-pulse node (memory broker), \`server.subscription('/rec/{id}', { history: { size: ${r.history.size}, ttl: ${r.history.ttl} } })\`; ` +
            `${r.clients} clients negotiate recovery (\`hello.pulse.recovery\`) and subscribe to one shared path, \`${recoveryPath}\`, while the node publishes ` +
            `${r.rate} messages/s to it (paced every 5 ms, seq 0, 1, 2...). After ${r.leadMs} ms, ${r.cycles} cycle(s) of: every client closes its socket ` +
            `(client side), ${r.pauseMs} ms pause, all reconnect at once sending \`hello.pulse.positions\` with the last position seen (tracked from the ` +
            `hello reply's \`pulse.positions\` and every pub's \`position\`), ${r.liveMs} ms live. recovered/s = replayed messages (pubs at or below the ` +
            'hello reply position) / (last replay end − first hello sent), per cycle, summed. Each client checks seq: a gap counts as lost, a repeat as ' +
            'duplicated; at the end each must have seen the last publish. Any lost, duplicated or `recovered: false` is a FAIL.';
    },
    targets: ['pulse'],
    baselines: [],
    headline: { key: 'rate', label: 'recovered/s', better: 'higher', format: rate },
    metrics: [
        { key: 'replayed', label: 'replayed', better: 'higher', format: count },
        { key: 'windowMs', label: 'replay window', better: 'lower', format: ms },
        { key: 'p99', label: 'p99 per-client resume', better: 'lower', format: ms },
        { key: 'published', label: 'published', better: 'higher', format: count },
        { key: 'lost', label: 'lost', better: 'lower', format: count },
        { key: 'dup', label: 'duplicated', better: 'lower', format: count },
        { key: 'notRecovered', label: 'recovered: false', better: 'lower', format: count }
    ],
    session: recoverySession,
    order: 1,
    run: async (ctx, s) => {

        const r = sizes(ctx.quick).recovery;
        const maxMs = 30_000;
        const steady = s.server.call<Published>('steady', { path: recoveryPath, rate: r.rate, size: sizes(ctx.quick).messageBytes, maxCount: r.rate * maxMs / 1000, durationMs: maxMs }, maxMs + 10_000);
        let replayed = 0;
        let windowMs = 0;
        let p99 = 0;
        let pub: Published;
        try {
            await sleep(r.leadMs);
            for (let cycle = 0; cycle < r.cycles; ++cycle) {
                await s.client.call('recDrop', {}, 10_000);
                await sleep(r.pauseMs);
                const res = await s.client.call<Resumed>('recResume', { timeoutMs: 15_000 }, 20_000);
                if (res.failed) {
                    throw new Error(`${res.failed} of ${r.clients} clients failed to resume (${res.firstError})`);
                }

                if (!res.complete) {
                    ctx.log(`    recovery: cycle ${cycle + 1}: replay not complete within 15 s (${res.replayed} of ${res.missedAtResume} replayed)`);
                }

                if (process.env.BENCH_VERBOSE) {
                    ctx.log(`    recovery cycle ${cycle + 1}: ${res.resumed} hellos in ${res.helloMs.toFixed(0)} ms, ${res.replayed} of ${res.missedAtResume} missed replayed, ` +
                        `window ${res.windowMs.toFixed(0)} ms; per client (hello sent → last replayed) p50 ${res.p50Ms.toFixed(0)} / p99 ${res.p99Ms.toFixed(0)} / max ${res.maxMs.toFixed(0)} ms`);
                }

                replayed += res.replayed;
                windowMs += res.windowMs;
                p99 = Math.max(p99, res.p99Ms);
                await sleep(r.liveMs);
            }
        }
        finally {
            await s.server.call('steadyStop').catch(() => undefined);
            pub = await steady;
        }

        const check = await s.client.call<Checked>('recCheck', { last: pub.published - 1, timeoutMs: 10_000 }, 15_000);
        if (check.lost || check.dup || check.notRecovered || check.unexpectedClose) {
            ctx.log(`    FAIL recovery: ${check.lost} lost (${check.clientsLost} clients), ${check.dup} duplicated (${check.clientsDup} clients), ` +
                `${check.notRecovered} recovered: false, ${check.unexpectedClose} unexpected closes`);
        }

        return {
            rate: replayed / (windowMs / 1000),
            replayed,
            windowMs,
            p99,
            published: pub.published,
            lost: check.lost,
            dup: check.dup,
            notRecovered: check.notRecovered
        };
    }
};

// Many sockets: what a node does on its own with as many idle subscribed sockets as it may hold (heartbeats:
// does the event loop stall?), what each costs in heap, and how long one publish takes to reach them all; the
// same at a smaller count (many-small), so that the report shows whether the stall grows with N.

interface Idle { maxMs: number; p99Ms: number; p50Ms: number; samples: number; gcMaxMs: number; ownMaxMs: number; cpuUs: number; connections: number }

function manyScenario(id: string, at: ManyAt, session: SessionKind): Scenario {

    return {
        id,
        optIn: true,
        title: at === 'largest' ? 'Many sockets: idle event-loop stall, heap per socket, one publish to all' : 'Many sockets, the smaller count: the same figures at fewer sockets',
        describe: (quick) => {

            const m = sizes(quick).many;
            const n = manyCount(quick, at);
            const counts = manyCounts(quick);
            const which = at === 'largest' ?
                `${human(n)} sockets (the open-file limit ${human(openFileLimit())} minus 500, or the largest count of BENCH_MANY_SOCKETS)` :
                `${human(n)} sockets (the smaller count of BENCH_MANY_SOCKETS or 5,000; ${human(counts[counts.length - 1]!)} in the next table: does a figure grow with N?)`;
            return `${which}, each subscribed to its own ` +
                `\`/item/{id}\`, from ${Math.ceil(n / m.perLoad)} load processes of at most ${human(m.perLoad)} sockets, each from its own source address ` +
                `(127.0.0.2, .3, ..., never one an earlier session of the run used). Every target pings every ${m.heartbeat.interval / 1000} s and drops a peer silent for ${m.heartbeat.timeout / 1000} s ` +
                '(hapi-pulse and nes: `heartbeat`; socket.io: `pingInterval`/`pingTimeout`; raw ws: the ws README sweep of protocol pings, every interval). ' +
                `Idle stall: \`perf_hooks.monitorEventLoopDelay\` (10 ms resolution) in the server over ${m.idleMs / 1000} s with nothing but heartbeats; ` +
                'max is the longest the event loop was held (plus up to 10 ms), p99 of the 10 ms samples. Longest idle GC: the longest ' +
                'garbage-collector pause in that minute (`gc` performance entries); longest hold, GC taken out: the longest gap between the ' +
                'ticks of a 1 ms timer once the collector\'s pauses inside it are subtracted, i.e. what the process itself held the loop for. Heap/RSS per socket: after a forced GC, minus the ' +
                `figure before any connection. Then every socket also subscribes to \`/fan\` and the server publishes one 200 B message ${m.publishes} times ` +
                '(after one warm-up), waiting for every delivery: "to all" is the median time from publish to the last delivery ("per socket": divided by ' +
                'the sockets); p50/p99 over every delivery. Setups/s: all the connections of the session opened at once (50 in flight per load process); ' +
                'server CPU/setup: the server process\'s user+system CPU over those setups divided by them; setup p99/max: connect to hello reply, per socket. ' +
                'Opt-in (`--only many`, once per target): it takes about 1.5 minutes per target and count.';
        },
        targets: ['pulse', 'pulse-base', 'nes', 'socketio', 'ws-string'],
        baselines: ['pulse-base', 'nes', 'socketio', 'ws-string'],
        headline: { key: 'stallMax', label: 'longest idle stall', better: 'lower', format: ms },
        metrics: [
            { key: 'stallP99', label: 'idle p99', better: 'lower', format: ms },
            { key: 'gcMax', label: 'longest idle GC', better: 'lower', format: ms },
            { key: 'ownMax', label: 'longest hold, GC taken out', better: 'lower', format: ms },
            { key: 'heap', label: 'heap/socket', better: 'lower', format: kb },
            { key: 'rss', label: 'RSS/socket', better: 'lower', format: kb },
            { key: 'allMs', label: 'one publish to all', better: 'lower', format: ms },
            { key: 'allPerSocket', label: 'to all per socket', better: 'lower', format: us },
            { key: 'p50', label: 'delivery p50', better: 'lower', format: ms },
            { key: 'p99', label: 'delivery p99', better: 'lower', format: ms },
            { key: 'setupRate', label: 'setups/s', better: 'higher', format: rate },
            { key: 'setupCpu', label: 'server CPU/setup', better: 'lower', format: us },
            { key: 'setupP99', label: 'setup p99', better: 'lower', format: ms },
            { key: 'setupMax', label: 'setup max', better: 'lower', format: ms },
            { key: 'idleCpu', label: 'idle CPU', better: 'lower', format: (v) => `${(v * 100).toFixed(1)}%` },
            { key: 'dropped', label: 'dropped', better: 'lower', format: count },
            { key: 'sockets', label: 'sockets', better: 'higher', format: count }
        ],
        repeats: 1,
        session,
        order: 1,
        run: async (ctx, s) => {

            const m = sizes(ctx.quick).many;
            const n = manyCount(ctx.quick, at);
            const shares = s.state.shares as number[];
            const before = s.state.memBefore as Mem;
            await sleep(500);
            const after = await s.server.call<Mem>('mem', { gc: true });

            const idle = await s.server.call<Idle>('idle', { ms: m.idleMs, resolution: 10 }, m.idleMs + 30_000);
            const status = await Promise.all(s.clients.map((c) => c.call<{ open: number; dropped: number }>('status')));
            const dropped = status.reduce((sum, st) => sum + st.dropped, 0);

            const subscribed = await Promise.all(s.clients.map((c) => c.call<{ failed: number }>('subscribeAll', { path: '/fan', inflight: 50 }, 120_000)));
            if (subscribed.some((r) => r.failed)) {
                throw new Error(`${subscribed.reduce((sum, r) => sum + r.failed, 0)} subscriptions to /fan failed`);
            }

            const lasts: number[] = [];
            for (let round = 0; round <= m.publishes; ++round) {                            // Round 0: warm-up
                await Promise.all(s.clients.map((c) => c.call('arm', { mode: 'fan', latency: round > 1 ? 'keep' : 'reset' })));
                const pub = await s.server.call<Published>('fanout', { path: '/fan', count: 1, size: sizes(ctx.quick).messageBytes, seqBase: round * 10, stamp: true }, 60_000);
                const got = await Promise.all(s.clients.map((c, i) => c.call<Delivered>('wait', { total: shares[i]! - (status[i]!.dropped), timeoutMs: 30_000 }, 35_000)));
                const delivered = got.reduce((sum, g) => sum + g.delivered, 0);
                if (delivered < n - dropped) {
                    throw new Error(`one publish to all: ${delivered} of ${n - dropped} delivered within 30 s`);
                }

                if (round) {
                    lasts.push(Math.max(...got.map((g) => g.lastAt)) - pub.t0);
                }
            }

            const samples = await Promise.all(s.clients.map((c) => c.call<{ values: number[] }>('latencies', {}, 30_000)));
            const all = Float64Array.from(samples.flatMap((x) => x.values)).sort();
            const pct = (p: number) => (all.length ? all[Math.min(all.length - 1, Math.floor(p * all.length))]! : NaN);
            return {
                stallMax: idle.maxMs,
                stallP99: idle.p99Ms,
                gcMax: idle.gcMaxMs,
                ownMax: idle.ownMaxMs,
                heap: (after.heapUsed - before.heapUsed) / n,
                rss: (after.rss - before.rss) / n,
                allMs: median(lasts),
                allPerSocket: (median(lasts) * 1000) / n,
                p50: pct(0.5),
                p99: pct(0.99),
                setupRate: s.state.setupRate as number,
                setupCpu: s.state.setupCpu as number,
                setupP99: s.state.setupP99 as number,
                setupMax: s.state.setupMax as number,
                idleCpu: idle.cpuUs / 1000 / m.idleMs,
                dropped,
                sockets: n
            };
        }
    };
}

const many = manyScenario('many', 'largest', manySession);
const manySmall = manyScenario('many-small', 'smaller', manySmallSession);

export const scenarios: readonly Scenario[] = [
    fanout('small', '1k'),
    fanout('large', '5k'),
    compressed('small', '1k'),
    compressed('large', '5k'),
    targeted('small', '1k'),
    targeted('large', '5k'),
    multiPath,
    {
        id: 'storm',
        title: 'Storm: 10,000 publishes in a tight loop to 5,000 targeted sockets',
        describe: (quick) => {

            const sz = sizes(quick);
            return `${sz.large} sockets on their own \`/item/{id}\`; ${human(sz.storm.publishes)} publishes to random ids in one synchronous loop; ` +
                `deliveries counted for at most ${sz.storm.capMs / 1000} s. Run once per target (a pass/fail check), last in its session.`;
        },
        targets: all,
        baselines: [],
        repeats: 1,
        headline: { key: 'delivered', label: 'delivered', better: 'higher', format: count },
        metrics: [
            { key: 'expected', label: 'expected', better: 'higher', format: count },
            { key: 'dropped', label: 'clients dropped', better: 'lower', format: count },
            { key: 'ms', label: 'last delivery', better: 'lower', format: ms },
            { key: 'rate', label: 'publishes/s', better: 'higher', format: rate }
        ],
        session: large,
        order: 9,
        run: async (ctx, s) => {

            const sz = sizes(ctx.quick);
            const { publishes, capMs } = sz.storm;
            await s.client.call('arm', { mode: 'item' });
            const t0 = nowMs();
            let publishError = '';
            await s.server.call<Published>('targeted', { ids: sz.large, size: sz.messageBytes, batch: publishes, maxCount: publishes, durationMs: 1e9 }, capMs)
                .catch((err: Error) => {

                    publishError = err.message;
                });

            const left = Math.max(0, capMs - (nowMs() - t0));
            const got = await s.client.call<Delivered>('wait', { total: publishes, timeoutMs: left }, left + 5_000);
            if (publishError) {
                ctx.log(`    storm: the server did not finish its publish loop within ${capMs / 1000} s (${publishError})`);
            }

            const elapsed = got.lastAt ? got.lastAt - t0 : NaN;
            return {
                delivered: got.delivered,
                expected: publishes,
                dropped: got.dropped,
                ms: elapsed,
                rate: got.delivered === publishes ? publishes / (elapsed / 1000) : NaN
            };
        }
    },
    ...[1, 32].map((concurrency): Scenario => ({
        id: `request-c${concurrency}`,
        title: `Request round trips, concurrency ${concurrency}`,
        describe: (quick) => `${concurrency} socket(s), each in a closed loop of tunnelled \`GET /echo\` requests (socket.io: emit + ack; raw ws: echo) ` +
            `for ${sizes(quick).request.durationMs} ms after a ${sizes(quick).request.warmupMs} ms warm-up (the session first runs ` +
            `${sizes(quick).request.sessionWarmup.count} requests at concurrency 32, at most ${sizes(quick).request.sessionWarmup.maxMs / 1000} s, to let V8 optimise the request path); ` +
            'p50/p99 are round-trip latencies seen by the client.',
        targets: noPreframed,
        baselines: ['nes', 'socketio', 'ws-string'],
        headline: { key: 'rate', label: 'req/s', better: 'higher', format: rate },
        session: plain,
        order: concurrency,
        metrics: [
            { key: 'p50', label: 'p50', better: 'lower', format: ms },
            { key: 'p99', label: 'p99', better: 'lower', format: ms },
            { key: 'serverCpuUs', label: 'server CPU/req', better: 'lower', format: us },
            { key: 'errors', label: 'errors', better: 'lower', format: count }
        ],
        run: async (ctx, s) => {

            const r = sizes(ctx.quick).request;
            await s.client.call<Requests>('requests', { concurrency, durationMs: r.warmupMs, maxCount: 2_000_000 }, r.warmupMs + 20_000);     // Warm-up
            await s.server.call('cpuMark');
            const got = await s.client.call<Requests>('requests', { concurrency, durationMs: r.durationMs, maxCount: 2_000_000 }, r.durationMs + 20_000);
            const cpu = await s.server.call<Cpu>('cpuRead');
            return {
                rate: got.count / (got.ms / 1000),
                p50: got.p50Ms,
                p99: got.p99Ms,
                serverCpuUs: cpu.cpuUs / got.count,
                errors: got.errors
            };
        }
    })),
    {
        id: 'memory',
        title: 'Memory per idle subscribed socket',
        describe: (quick) => `${sizes(quick).large} sockets, each subscribed to its own \`/item/{id}\`, then idle for 0.5 s; ` +
            'server heapUsed and RSS after a forced GC, minus the same before any connection, divided by the socket count.',
        targets: noPreframed,
        baselines: ['nes', 'socketio', 'ws-string'],
        headline: { key: 'heap', label: 'heap/socket', better: 'lower', format: kb },
        metrics: [
            { key: 'rss', label: 'RSS/socket', better: 'lower', format: kb },
            { key: 'external', label: 'external+buffers/socket', better: 'lower', format: kb }
        ],
        session: large,
        order: 1,
        run: async (ctx, s) => {

            const sockets = sizes(ctx.quick).large;
            const before = s.state.memBefore as Mem;
            await new Promise((resolve) => setTimeout(resolve, 500));
            const after = await s.server.call<Mem>('mem', { gc: true });
            return {
                heap: (after.heapUsed - before.heapUsed) / sockets,
                rss: (after.rss - before.rss) / sockets,
                external: (after.external - before.external) / sockets
            };
        }
    },
    {
        id: 'connect',
        title: 'Connection setups (upgrade + hello)',
        describe: (quick) => `${sizes(quick).connect.count} connections, ${sizes(quick).connect.inflight} in flight, each a WebSocket upgrade followed by a ` +
            'hello round trip (socket.io: engine.io open + namespace connect), after a 200-connection warm-up; connections stay open until the end.',
        targets: noPreframed,
        baselines: ['nes', 'socketio', 'ws-string'],
        headline: { key: 'rate', label: 'setups/s', better: 'higher', format: rate },
        metrics: [
            { key: 'serverCpuUs', label: 'server CPU/setup', better: 'lower', format: us }
        ],
        session: plain,
        order: 99,
        run: async (ctx, s) => {

            const c = sizes(ctx.quick).connect;
            await s.client.call('closeAll');
            await connect(s, 200, 'none', c.inflight);
            await s.client.call('closeAll');
            await s.server.call('cpuMark');
            const result = await connect(s, c.count, 'none', c.inflight);
            const cpu = await s.server.call<Cpu>('cpuRead');
            return {
                rate: result.connected / (result.ms / 1000),
                serverCpuUs: cpu.cpuUs / result.connected
            };
        }
    },
    twoNode,
    recovery,
    ...presenceScenarios,                                       // presence-count, presence-reconnect
    manySmall,
    many
];
