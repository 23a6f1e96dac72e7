// A message encoded once and shared by every socket it goes to. The UTF-8 bytes (and the chunked form,
// when sockets chunk) are made on first use, so a publish with a thousand recipients encodes once; for
// sockets that negotiated compression it is also compressed once per window size in use.

import { chunk } from '../protocol';
import { textFrame } from './compression';
import type { Deflater, PendingFrame } from './compression';

export type Frame = Buffer | PendingFrame;                  // pending while a large message is compressed

export class Prepared {

    private plainFrame: Buffer | null = null;
    private positionedFrame: Buffer | null = null;
    private chunks: string[] | null = null;
    private positionedChunks: string[] | null = null;
    private deflated: Map<number, Frame | Frame[]> | null = null;  // by window and form (see key())

    // `positioned` is the same message with its history position, for sockets that negotiated recovery;
    // `path` and `offset` let a socket that is catching up on a path hold and de-duplicate live pubs.
    constructor(readonly text: string, readonly positioned: string | null = null, readonly path: string | null = null, readonly offset = 0, readonly epoch: string | null = null) { }

    // The whole WebSocket frame (header + payload), built once and written as is to every socket.
    frame(withPosition: boolean): Buffer {

        if (withPosition && this.positioned !== null) {
            return (this.positionedFrame ??= textFrame(this.positioned));
        }

        return (this.plainFrame ??= textFrame(this.text));
    }

    // The frame for a socket that negotiated compression with a window of `bits`: compressed once for all the
    // sockets whose window allows it; the plain frame under the threshold.
    deflatedFrame(withPosition: boolean, bits: number, deflater: Deflater): Frame {

        const plain = this.frame(withPosition);
        const window = deflater.window(plain, bits);
        if (!window) {
            return plain;
        }

        const key = this.key(withPosition, window, false);
        let frame = this.deflated?.get(key) as Frame | undefined;
        if (frame === undefined) {
            frame = deflater.compress(plain, window);
            (this.deflated ??= new Map()).set(key, frame);
        }

        return frame;
    }

    // nes chunking: null when the message fits in one frame.
    chunked(maxChunkChars: number, withPosition: boolean): string[] | null {

        if (withPosition && this.positioned !== null) {
            if (this.positioned.length <= maxChunkChars) {
                return null;
            }

            return (this.positionedChunks ??= chunk(this.positioned, maxChunkChars));
        }

        if (this.text.length <= maxChunkChars) {
            return null;
        }

        return (this.chunks ??= chunk(this.text, maxChunkChars));
    }

    // The chunks as frames for a socket that negotiated compression: each compressed on its own (it is a message
    // of its own), once for all the sockets with the same window.
    deflatedChunks(parts: string[], withPosition: boolean, bits: number, deflater: Deflater): Frame[] {

        const key = this.key(withPosition, bits, true);
        let frames = this.deflated?.get(key) as Frame[] | undefined;
        if (frames === undefined) {
            frames = parts.map((part) => deflater.frame(textFrame(part), bits));
            (this.deflated ??= new Map()).set(key, frames);
        }

        return frames;
    }

    private key(withPosition: boolean, window: number, chunks: boolean): number {

        return window * 4 + (withPosition && this.positioned !== null ? 2 : 0) + (chunks ? 1 : 0);
    }
}
