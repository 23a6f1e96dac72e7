// A message encoded once and shared by every socket it goes to. The UTF-8 bytes (and the chunked form,
// when sockets chunk) are made on first use, so a publish with a thousand recipients encodes once.

import { chunk } from '../protocol';

// One unmasked, final text frame (RFC 6455 §5.2): header and UTF-8 payload in a single allocation.
const encode = (text: string): Buffer => {

    const length = Buffer.byteLength(text);
    const header = length < 126 ? 2 : length < 0x10000 ? 4 : 10;
    const frame = Buffer.allocUnsafe(header + length);
    frame[0] = 0x81;                                        // FIN + text opcode
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

    frame.write(text, header);
    return frame;
};

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
