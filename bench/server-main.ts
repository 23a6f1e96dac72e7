// Server child process: `node --expose-gc dist/bench/server-main.js <target>`. Loads one implementation from
// servers/<target>.js and obeys the orchestrator's commands (see ipc.ts). Publishing loops are bounded in count
// and in time.

import { monitorEventLoopDelay, performance, PerformanceObserver } from 'node:perf_hooks';

import { serve, nowMs } from './ipc';
import { catalogue } from './messages';
import type { BenchServer, ServerFactory, ServerOptions } from './servers/types';

const target = process.argv[2] ?? '';

let server: BenchServer | null = null;
let cpuMark = process.cpuUsage();
let wallMark = nowMs();
let steadyStop: (() => void) | null = null;

function message(seq: number, to: string, size: number): object {

    // An object whose JSON is `size` bytes (for size >= ~40). `to` lets clients check they got their own messages.
    const base = JSON.stringify({ seq, to, pad: '' }).length;
    return { seq, to, pad: 'x'.repeat(Math.max(0, size - base)) };
}

function gc(): void {

    const collect = (globalThis as { gc?: () => void }).gc;
    if (collect) {
        collect();
        collect();
    }
}

function need(): BenchServer {

    if (!server) {
        throw new Error('Server not started');
    }

    return server;
}

serve({
    listen: async (args) => {

        const factory = (require(`./servers/${target}`) as { create: ServerFactory }).create;
        server = await factory(args as ServerOptions);
        const port = await server.listen();
        return { port };
    },

    mem: (args) => {

        if (args.gc) {
            gc();
        }

        const usage = process.memoryUsage();
        return { heapUsed: usage.heapUsed, rss: usage.rss, external: usage.external, arrayBuffers: usage.arrayBuffers };
    },

    cpuMark: () => {

        cpuMark = process.cpuUsage();
        wallMark = nowMs();
        return {};
    },

    cpuRead: () => {

        const usage = process.cpuUsage(cpuMark);
        return { cpuUs: usage.user + usage.system, wallMs: nowMs() - wallMark };
    },

    connections: () => need().connections(),

    // Event-loop delay over `ms` of whatever the server does on its own (heartbeats, sweeps): a timer every
    // `resolution` ms records how late it fired, so `max` is the longest stall seen (plus up to one resolution).
    // Beside it, what of the longest stall was not the garbage collector: a 1 ms interval timer notes each gap between
    // its ticks, and the collector's pauses inside a gap ('gc' performance entries) are taken out of it.
    idle: async (args) => {

        const ms = Number(args.ms);
        const histogram = monitorEventLoopDelay({ resolution: Number(args.resolution ?? 10) });
        const pauses: Array<[number, number]> = [];
        const observer = new PerformanceObserver((list) => {

            for (const entry of list.getEntries()) {
                pauses.push([entry.startTime, entry.startTime + entry.duration]);
            }
        });

        const gaps: Array<[number, number]> = [];
        let last = performance.now();
        const ticker = setInterval(() => {

            const now = performance.now();
            if (now - last > 3) {
                gaps.push([last, now]);
            }

            last = now;
        }, 1);

        observer.observe({ entryTypes: ['gc'] });
        const cpu = process.cpuUsage();
        histogram.enable();
        await new Promise((resolve) => setTimeout(resolve, ms));
        histogram.disable();
        const usage = process.cpuUsage(cpu);
        clearInterval(ticker);
        observer.disconnect();

        const overlap = (a: number, b: number) => pauses.reduce((sum, [from, to]) => sum + Math.max(0, Math.min(b, to) - Math.max(a, from)), 0);
        const ownMaxMs = gaps.reduce((max, [a, b]) => Math.max(max, b - a - overlap(a, b)), 0);
        const toMs = (ns: number) => ns / 1e6;
        return {
            maxMs: toMs(histogram.max),
            p99Ms: toMs(histogram.percentile(99)),
            p50Ms: toMs(histogram.percentile(50)),
            samples: histogram.count,
            gcMaxMs: pauses.reduce((max, [from, to]) => Math.max(max, to - from), 0),
            ownMaxMs,
            cpuUs: usage.user + usage.system,
            connections: need().connections()
        };
    },

    // Burst: `count` publishes to one path in one synchronous loop. With `stamp`, each message starts with
    // `t`: nowMs() (the machine-wide monotonic clock) taken just before its publish() call, for latency.
    fanout: (args) => {

        const srv = need();
        const path = String(args.path);
        const count = Number(args.count);
        const size = Number(args.size);
        const seqBase = Number(args.seqBase ?? 0);
        if (args.stamp) {
            const pad = (message(seqBase, path, size - 24) as { pad: string }).pad;       // "t":123456789.123456, ≈ 24 B
            const t0 = nowMs();
            for (let i = 0; i < count; ++i) {
                srv.publish(path, { t: nowMs(), seq: seqBase + i, to: path, pad });
            }

            return { t0, t1: nowMs(), published: count };
        }

        const messages = Array.from({ length: count }, (_, i) => (args.shape === 'catalogue' ? catalogue(size, seqBase + i, path) : message(seqBase + i, path, size)));
        const t0 = nowMs();
        for (const msg of messages) {
            srv.publish(path, msg);
        }

        return { t0, t1: nowMs(), published: count };
    },

    // Burst: `count` publishes, each to every path of `paths` at once, once per socket (hapi-pulse only).
    fanoutOnce: (args) => {

        const srv = need();
        const paths = args.paths as string[];
        const count = Number(args.count);
        const messages = Array.from({ length: count }, (_, i) => message(Number(args.seqBase ?? 0) + i, paths[0]!, Number(args.size)));
        const t0 = nowMs();
        for (const msg of messages) {
            srv.publishOnce!(paths, msg);
        }

        return { t0, t1: nowMs(), published: count };
    },

    // Steady publishing to one path: `rate` per second, paced every 5 ms, seq 0, 1, 2... until steadyStop,
    // `durationMs` or `maxCount`. Resolves with the count once it stops.
    steady: async (args) => {

        const srv = need();
        const path = String(args.path);
        const rate = Number(args.rate);
        const size = Number(args.size);
        const maxCount = Number(args.maxCount);
        const durationMs = Number(args.durationMs);
        const pad = (message(0, path, size) as { pad: string }).pad;
        const t0 = nowMs();
        let published = 0;

        await new Promise<void>((resolve) => {

            const timer = setInterval(() => {

                const due = Math.min(maxCount, Math.floor(((nowMs() - t0) * rate) / 1000));
                for (; published < due; ++published) {
                    srv.publish(path, { seq: published, to: path, pad });
                }

                if (published >= maxCount || nowMs() - t0 >= durationMs) {
                    stop();
                }
            }, 5);

            const stop = () => {

                clearInterval(timer);
                steadyStop = null;
                resolve();
            };

            steadyStop = stop;
        });

        return { t0, t1: nowMs(), published };
    },

    steadyStop: () => {

        steadyStop?.();
        return {};
    },

    publishErrors: () => ({ errors: server?.publishErrors?.() ?? 0 }),

    // Publishes to '/item/{random id < ids}', `batch` per macrotask, until `durationMs` or `maxCount` is reached
    // (batch = maxCount and durationMs = Infinity gives one tight synchronous loop: the storm).
    targeted: async (args) => {

        const srv = need();
        const ids = Number(args.ids);
        const size = Number(args.size);
        const batch = Number(args.batch);
        const maxCount = Number(args.maxCount);
        const durationMs = Number(args.durationMs);
        const paths = Array.from({ length: ids }, (_, i) => `/item/${i}`);
        const template = message(0, '/item/99999', size) as { pad: string };
        const t0 = nowMs();
        let published = 0;

        await new Promise<void>((resolve) => {

            const step = () => {

                const end = Math.min(maxCount, published + batch);
                for (; published < end; ++published) {
                    const path = paths[(Math.random() * ids) | 0]!;
                    srv.publish(path, { seq: published, to: path, pad: template.pad });
                }

                if (published >= maxCount ||
                    nowMs() - t0 >= durationMs) {

                    return resolve();
                }

                setImmediate(step);
            };

            step();
        });

        return { t0, t1: nowMs(), published };
    },

    // Presence (hapi-pulse with ServerOptions.presence): members written straight into the presence store, as this
    // node's (users m<first> …, in one script call per 500).
    presenceFill: async (args) => {

        const srv = need();
        const path = String(args.path);
        const first = Number(args.first);
        const count = Number(args.count);
        for (let done = 0; done < count; done += 500) {
            await srv.presenceFill!(path, first + done, Math.min(500, count - done));
        }

        return {};
    },

    // server.presence.count(path) in `concurrency` loops for `durationMs`: counts done, the time they took, the
    // last count read (checked by the caller).
    presenceCount: async (args) => {

        const srv = need();
        const path = String(args.path);
        const concurrency = Number(args.concurrency);
        const durationMs = Number(args.durationMs);
        let ops = 0;
        let users = -1;
        const t0 = nowMs();
        const end = t0 + durationMs;
        await Promise.all(Array.from({ length: concurrency }, async () => {

            while (nowMs() < end) {
                users = (await srv.presenceCount!(path)).users;
                ++ops;
            }
        }));

        return { ops, ms: nowMs() - t0, users };
    },

    stop: async () => {

        steadyStop?.();
        if (server) {
            await Promise.race([server.stop(), new Promise((resolve) => setTimeout(resolve, 1000))]);
        }

        setImmediate(() => process.exit(0));
        return {};
    }
});
