// `npm run build && node dist/bench/deflate.js`: what compressing a publish costs, on this machine, in one process.
//   - per message size: the synchronous deflate hapi-pulse does once per publish (and per window size in use),
//     its compressed size, and the thread-pool deflate used above lib/server/compression.ts's syncLimit;
//   - per publish to N recipients: compressing once (hapi-pulse) against compressing per socket (what ws does
//     for every recipient when permessage-deflate is on, e.g. socket.io with perMessageDeflate).

import * as Zlib from 'node:zlib';

import { Deflater, syncLimit, textFrame, windowFor } from '../lib/server/compression';
import { catalogue as realistic } from './messages';

const level = 6;

const timeUs = (run: () => unknown, minMs = 200): number => {

    let count = 0;
    const start = process.hrtime.bigint();
    let elapsed = 0n;
    do {
        run();
        ++count;
        elapsed = process.hrtime.bigint() - start;
    } while (elapsed < BigInt(minMs) * 1_000_000n);

    return Number(elapsed) / 1000 / count;
};

const asyncUs = async (payload: Buffer, runs = 20): Promise<number> => {

    const start = process.hrtime.bigint();
    for (let i = 0; i < runs; ++i) {
        await new Promise((resolve) => Zlib.deflateRaw(payload, { level, finishFlush: Zlib.constants.Z_SYNC_FLUSH }, resolve));
    }

    return Number(process.hrtime.bigint() - start) / 1000 / runs;
};

const main = async (): Promise<void> => {

    console.log(`Node ${process.version}, zlib level ${level}, syncLimit ${syncLimit / 1024} KiB\n`);
    timeUs(() => Zlib.deflateRawSync(JSON.stringify(realistic(4096)), { level }), 300);        // warm-up
    console.log('| message | compressed | ratio | window | sync deflate (event loop) | thread-pool deflate (latency) |');
    console.log('| ---: | ---: | ---: | ---: | ---: | ---: |');
    for (const bytes of [1024, 3 * 1024, 16 * 1024, 64 * 1024, 256 * 1024, 1024 * 1024]) {
        const payload = Buffer.from(JSON.stringify(realistic(bytes)));
        const bits = windowFor(payload.length, 15);
        const options = { level, windowBits: bits, finishFlush: Zlib.constants.Z_SYNC_FLUSH };
        const compressed = Zlib.deflateRawSync(payload, options).length - 4;
        const sync = timeUs(() => Zlib.deflateRawSync(payload, options));
        const pooled = await asyncUs(payload);
        console.log(`| ${(payload.length / 1024).toFixed(1)} KB | ${(compressed / 1024).toFixed(2)} KB | ${(compressed / payload.length).toFixed(3)} | ${bits} | ${sync.toFixed(1)} µs | ${pooled.toFixed(1)} µs |`);
    }

    // Per publish: once (hapi-pulse's Deflater, frame included) vs once per recipient with a context each, as ws
    // keeps one per socket (a reset stream between messages under server_no_context_takeover, the cheapest case).
    const message = JSON.stringify({ type: 'pub', path: '/fan', message: realistic(3 * 1024) });
    const plain = textFrame(message);
    const deflater = new Deflater({ threshold: 1024, level });
    const shared = timeUs(() => deflater.compress(plain, windowFor(plain.length, 15)));
    const contexts = Array.from({ length: 64 }, () => Zlib.createDeflateRaw({ level }));
    const perSocket = await (async () => {

        const runs = 2000;
        const start = process.hrtime.bigint();
        for (let i = 0; i < runs; ++i) {
            const context = contexts[i % contexts.length]!;
            await new Promise<void>((resolve) => {

                context.write(message);
                context.flush(Zlib.constants.Z_SYNC_FLUSH, () => {

                    context.read();
                    context.reset();
                    resolve();
                });
            });
        }

        return Number(process.hrtime.bigint() - start) / 1000 / runs;
    })();

    const cpuPerSocket = timeUs(() => Zlib.deflateRawSync(message, { level }));
    console.log(`\nPublish of ${(message.length / 1024).toFixed(1)} KB to N recipients (compressed to ${(deflater.compress(plain, 12) as Buffer).length} B):`);
    console.log('| recipients | hapi-pulse: once per publish | per socket, sync deflate each | per socket, ws-style stream each (wall) |');
    console.log('| ---: | ---: | ---: | ---: |');
    for (const n of [1000, 5000]) {
        console.log(`| ${n} | ${shared.toFixed(0)} µs | ${(cpuPerSocket * n / 1000).toFixed(1)} ms | ${(perSocket * n / 1000).toFixed(1)} ms |`);
    }

    for (const context of contexts) {
        context.close();
    }
};

main().catch((err: unknown) => {

    console.error(err);
    process.exitCode = 1;
});
