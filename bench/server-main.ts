// Server child process: `node --expose-gc dist/bench/server-main.js <target>`. Loads one implementation from
// servers/<target>.js and obeys the orchestrator's commands (see ipc.ts). Publishing loops are bounded in count
// and in time.

import { serve, nowMs } from './ipc';
import type { BenchServer, ServerFactory } from './servers/types';

const target = process.argv[2] ?? '';

let server: BenchServer | null = null;
let cpuMark = process.cpuUsage();
let wallMark = nowMs();

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
    listen: async () => {

        const factory = (require(`./servers/${target}`) as { create: ServerFactory }).create;
        server = await factory();
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

    // Burst: `count` publishes to one path in one synchronous loop.
    fanout: (args) => {

        const srv = need();
        const path = String(args.path);
        const count = Number(args.count);
        const size = Number(args.size);
        const seqBase = Number(args.seqBase ?? 0);
        const messages = Array.from({ length: count }, (_, i) => message(seqBase + i, path, size));
        const t0 = nowMs();
        for (const msg of messages) {
            srv.publish(path, msg);
        }

        return { t0, t1: nowMs(), published: count };
    },

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

    stop: async () => {

        if (server) {
            await Promise.race([server.stop(), new Promise((resolve) => setTimeout(resolve, 1000))]);
        }

        setImmediate(() => process.exit(0));
        return {};
    }
});
