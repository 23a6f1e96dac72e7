// permessage-deflate (RFC 7692) without a compression context per socket. Every offer is answered with
// server_no_context_takeover (§7.1.1.1), so each message the server sends is compressed on its own: one
// compressed frame fits every socket that negotiated it, as one uncompressed frame fits every other socket.
// ws negotiates and inflates what clients send (bounded by maxPayload on the inflated size); it never
// compresses anything itself.

import * as Zlib from 'node:zlib';

import type { PerMessageDeflateOptions, WebSocket } from 'ws';

// A frame still being compressed on the thread pool; `bytes` is its uncompressed size, an upper bound of its own.
export type PendingFrame = Promise<Buffer> & { readonly bytes: number };

export interface CompressionSettings {
    threshold: number;                              // UTF-8 bytes: smaller messages go uncompressed
    level: number;                                  // zlib level, 1 (fastest) to 9 (smallest)
}

// Deflating more than this on the event loop would hold it for about a millisecond (bench/deflate.ts
// measures it): larger messages are deflated on the thread pool, and each socket keeps its order meanwhile.
export const syncLimit = 64 * 1024;
const concurrency = 4;                             // thread-pool deflates at once: each holds ~300 KB of zlib state

const minLookahead = 262;                          // zlib never refers further back than the window minus this
const smallestWindow = 9;                          // zlib cannot make raw deflate with 8 bits (256 B) of window
const largestWindow = 15;

// What ws is given: accept any offer, always with server_no_context_takeover; ws itself never compresses.
export const negotiation = (): PerMessageDeflateOptions => ({ serverNoContextTakeover: true, threshold: Infinity });

// The window (in bits) a socket's frames may use, or 0 when they go uncompressed: no compression negotiated,
// or a client that asked for a 256-byte window, which zlib cannot produce. Negotiation is ws's, and it keeps
// the accepted parameters only there.
export const windowOf = (ws: WebSocket): number => {

    const extension = (ws as unknown as { _extensions: { 'permessage-deflate'?: { params: { server_max_window_bits?: number } } } })._extensions['permessage-deflate'];
    if (!extension) {
        return 0;
    }

    const bits = extension.params.server_max_window_bits ?? largestWindow;
    return bits < smallestWindow ? 0 : bits;
};

// One unmasked, final text frame (RFC 6455 §5.2), RSV1 set when the payload is compressed (RFC 7692 §6):
// header and payload in a single allocation.
export const textFrame = (payload: Buffer | string, compressed = false): Buffer => {

    const length = typeof payload === 'string' ? Buffer.byteLength(payload) : payload.length;
    const header = length < 126 ? 2 : length < 0x10000 ? 4 : 10;
    const frame = Buffer.allocUnsafe(header + length);
    frame[0] = compressed ? 0xc1 : 0x81;                    // FIN (+ RSV1) + text opcode
    if (header === 2) {
        frame[1] = length;
    }
    else if (header === 4) {
        frame[1] = 126;
        frame.writeUInt16BE(length, 2);
    }
    else {
        frame[1] = 127;
        frame.writeBigUInt64BE(BigInt(length), 2);
    }

    if (typeof payload === 'string') {
        frame.write(payload, header);
    }
    else {
        payload.copy(frame, header);
    }

    return frame;
};

export const payloadOf = (frame: Buffer): Buffer => frame.subarray(frame[1]! < 126 ? 2 : frame[1] === 126 ? 4 : 10);

// A message never needs a window larger than itself: compressed with the smallest window that holds it, the
// frame is valid for every socket that allows that window or a larger one, so most sockets share one frame.
export const windowFor = (bytes: number, allowed: number): number => {

    let bits = smallestWindow;
    while (bits < allowed && (1 << bits) - minLookahead < bytes) {
        ++bits;
    }

    return bits;
};

export class Deflater {

    readonly threshold: number;
    private readonly level: number;
    private running = 0;
    private readonly queued: (() => void)[] = [];

    constructor(settings: CompressionSettings) {

        this.threshold = settings.threshold;
        this.level = settings.level;
    }

    // The window (bits) a frame is compressed with for a socket that allows `bits`, or 0 when it stays uncompressed.
    window(plain: Buffer, bits: number): number {

        const bytes = payloadOf(plain).length;
        return bytes < this.threshold ? 0 : windowFor(bytes, bits);
    }

    // A plain frame as a socket allowing `bits` of window receives it: compressed from the threshold up.
    frame(plain: Buffer, bits: number): Buffer | PendingFrame {

        const window = this.window(plain, bits);
        return window ? this.compress(plain, window) : plain;
    }

    // The compressed frame of a plain (uncompressed) frame's payload, deflated with `bits` of window. Large
    // payloads come back as a promise, which never rejects: on a zlib failure the plain frame is sent instead.
    compress(plain: Buffer, bits: number): Buffer | PendingFrame {

        const payload = payloadOf(plain);
        const options = { level: this.level, windowBits: bits, finishFlush: Zlib.constants.Z_SYNC_FLUSH };
        if (payload.length <= syncLimit) {
            return framed(Zlib.deflateRawSync(payload, options));
        }

        const pending = new Promise<Buffer>((resolve) => {

            const run = () => {

                ++this.running;
                Zlib.deflateRaw(payload, options, (err, deflated) => {

                    --this.running;
                    this.queued.shift()?.();
                    // zlib fails only on invalid options, which the settings schema rules out
                    // $lab:coverage:off$
                    resolve(err ? plain : framed(deflated));
                    // $lab:coverage:on$
                });
            };

            if (this.running < concurrency) {
                run();
            }
            else {
                this.queued.push(run);
            }
        });

        return Object.assign(pending, { bytes: plain.length });
    }
}

// The sync flush ends the data with an empty stored block (00 00 ff ff), which the sender removes and the
// receiver adds back (RFC 7692 §7.2.1).
const framed = (deflated: Buffer): Buffer => textFrame(deflated.subarray(0, deflated.length - 4), true);
