// A message encoded once and shared by every socket it goes to. The UTF-8 bytes (and the chunked form,
// when sockets chunk) are made on first use, so a publish with a thousand recipients encodes once.

import WebSocket from 'ws';

import { chunk } from '../protocol';

// ws builds frames with Sender.frame; its types do not declare it.
const { Sender } = WebSocket as unknown as { Sender: { frame(data: Buffer, options: object): Buffer[] } };
const textFrame = { fin: true, rsv1: false, opcode: 1, mask: false, readOnly: false };
const encode = (text: string): Buffer => Buffer.concat(Sender.frame(Buffer.from(text), textFrame));

export class Prepared {

    private plainFrame: Buffer | null = null;
    private positionedFrame: Buffer | null = null;
    private chunks: string[] | null = null;
    private positionedChunks: string[] | null = null;

    // `positioned` is the same message with its history position, for sockets that negotiated recovery;
    // `path` and `offset` let a socket that is catching up on a path hold and de-duplicate live pubs.
    constructor(readonly text: string, readonly positioned: string | null = null, readonly path: string | null = null, readonly offset = 0, readonly epoch: string | null = null) { }

    // The whole WebSocket frame (header + payload), built once and written as is to every socket.
    frame(withPosition: boolean): Buffer {

        if (withPosition && this.positioned !== null) {
            return (this.positionedFrame ??= encode(this.positioned));
        }

        return (this.plainFrame ??= encode(this.text));
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
}
