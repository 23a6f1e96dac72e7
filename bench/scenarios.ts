// The scenario list. Each scenario is data: which targets it runs against, its headline metric (the one with ratio
// columns), its other metrics, and a run() that drives one server child and one load child through a Session and
// returns raw numbers for one repetition. Adding a scenario (a two-node run behind a Redis broker, a recovery
// run after a dropped connection, ...) is adding an entry here; Session is where a multi-node harness would grow
// (several server children sharing a broker) without touching the report code.

import { nowMs, type Peer } from './ipc';
import { human } from './stats';
import type { Target } from './targets';

export interface Session {
    readonly target: Target;
    readonly server: Peer;
    readonly client: Peer;
    readonly port: number;
    readonly state: Record<string, unknown>;                   // Shared by the scenarios of one session
}

// Connecting thousands of sockets costs seconds per target and run, so scenarios that can share a population of
// sockets run in one session: the runner opens one server child and one load child per (repetition, kind, target),
// calls setup() once, then runs that kind's selected scenarios in `order`. A scenario that fails ends its session;
// the next one of the same kind gets a fresh session.
export interface SessionKind {
    readonly id: string;
    setup(ctx: Ctx, session: Session): Promise<void>;
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
    targeted: { windowMs: number; batch: number; maxCount: number; warmup: number };
    storm: { publishes: number; capMs: number };
    request: { durationMs: number; warmupMs: number; sessionWarmup: { count: number; maxMs: number } };
    connect: { count: number; inflight: number };
}

export function sizes(quick: boolean): Sizes {

    return quick ? {
        small: 500,
        large: 2000,
        fanout: { small: 40, large: 10 },
        messageBytes: 200,
        targeted: { windowMs: 500, batch: 50, maxCount: 100_000, warmup: 100 },
        storm: { publishes: 2000, capMs: 5000 },
        request: { durationMs: 500, warmupMs: 200, sessionWarmup: { count: 500, maxMs: 1000 } },
        connect: { count: 300, inflight: 50 }
    } : {
        small: 1000,
        large: 5000,
        fanout: { small: 100, large: 20 },
        messageBytes: 200,
        targeted: { windowMs: 1500, batch: 50, maxCount: 200_000, warmup: 100 },
        storm: { publishes: 10_000, capMs: 20_000 },
        request: { durationMs: 1500, warmupMs: 300, sessionWarmup: { count: 4000, maxMs: 3000 } },
        connect: { count: 1000, inflight: 50 }
    };
}

// Shared result shapes (see load.ts and server-main.ts)

interface Connected { connected: number; failed: number; ms: number; clientCpuUs: number; firstError: string }
interface Published { t0: number; t1: number; published: number }
interface Delivered { delivered: number; bad: number; firstAt: number; lastAt: number; dropped: number; open: number; clientCpuUs: number }
interface Cpu { cpuUs: number; wallMs: number }
interface Mem { heapUsed: number; rss: number; external: number; arrayBuffers: number }
interface Requests { count: number; errors: number; ms: number; p50Ms: number; p99Ms: number; clientCpuUs: number }

async function connect(s: Session, count: number, subs: 'fan' | 'item' | 'none', inflight = 100): Promise<Connected> {

    const result = await s.client.call<Connected>('connect', { proto: s.target.proto, port: s.port, count, inflight, subs, timeoutMs: 15_000, totalTimeoutMs: 90_000 }, 120_000);
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
    }
];

const [small, large, plain] = sessions as [SessionKind, SessionKind, SessionKind];

const rate = (v: number) => `${human(v)}/s`;
const ms = (v: number) => `${human(v)} ms`;
const us = (v: number) => `${human(v)} µs`;
const kb = (v: number) => `${(v / 1024).toFixed(1)} KB`;
const count = (v: number) => human(v);

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

export const scenarios: readonly Scenario[] = [
    fanout('small', '1k'),
    fanout('large', '5k'),
    targeted('small', '1k'),
    targeted('large', '5k'),
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
    }
];
