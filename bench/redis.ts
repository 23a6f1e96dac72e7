// Redis helpers for the orchestrator (two-node scenario): is Redis reachable, and delete a run's keys afterwards.
// The URL is REDIS_URL, default redis://127.0.0.1:6379. Every call is bounded in time.

import { randomBytes } from 'node:crypto';

import { createClient } from '@redis/client';

export const redisUrl = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';

export function uniquePrefix(): string {

    return `pulse-bench:${process.pid}:${randomBytes(4).toString('hex')}:`;
}

function open() {

    return createClient({ url: redisUrl, socket: { connectTimeout: 2_000, reconnectStrategy: false }, disableOfflineQueue: true });
}

async function withClient<T>(fn: (client: ReturnType<typeof open>) => Promise<T>, timeoutMs: number): Promise<T> {

    const client = open();
    client.on('error', () => { });
    let timer: NodeJS.Timeout | undefined;
    try {
        const deadline = new Promise<never>((_, reject) => {

            timer = setTimeout(() => reject(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs);
        });

        return await Promise.race([(async () => {

            await client.connect();
            return fn(client);
        })(), deadline]);
    }
    finally {
        clearTimeout(timer);
        client.destroy();
    }
}

// null when Redis answers PING, else why not.
export async function redisProblem(timeoutMs = 2_000): Promise<string | null> {

    try {
        const pong = await withClient((client) => client.ping(), timeoutMs);
        return pong === 'PONG' ? null : `unexpected PING reply ${String(pong)}`;
    }
    catch (err) {
        return (err as Error).message || String(err);
    }
}

// Deletes every key starting with `prefix` (SCAN, not KEYS); resolves with how many were deleted.
export async function redisCleanup(prefix: string, timeoutMs = 5_000): Promise<number> {

    return withClient(async (client) => {

        let deleted = 0;
        for await (const keys of client.scanIterator({ MATCH: `${prefix}*`, COUNT: 1000 })) {
            if (keys.length) {
                deleted += await client.del(keys);
            }
        }

        return deleted;
    }, timeoutMs);
}
