// Raw ws, the limit: the WebSocket frame (header + payload) is built once per publish and the same bytes are queued
// on every subscriber's TCP socket; each socket's queue is flushed once per tick as a single write. Server frames
// are unmasked and we never use compression, so the bytes are identical for every recipient and writing them
// between whole ws frames is safe.

import { createWsTarget, type Conn } from './ws-common';
import type { ServerFactory } from './types';

export function textFrame(text: string): Buffer {

    const length = Buffer.byteLength(text);
    const headerLength = length < 126 ? 2 : (length < 0x10000 ? 4 : 10);
    const frame = Buffer.allocUnsafe(headerLength + length);
    frame[0] = 0x81;                                            // FIN + text opcode
    if (length < 126) {
        frame[1] = length;
    }
    else if (length < 0x10000) {
        frame[1] = 126;
        frame.writeUInt16BE(length, 2);
    }
    else {
        frame[1] = 127;
        frame.writeBigUInt64BE(BigInt(length), 2);
    }

    frame.write(text, headerLength);
    return frame;
}

export const create: ServerFactory = (options) => {

    let dirty: Conn[] = [];
    let scheduled = false;

    const flush = () => {

        scheduled = false;
        const list = dirty;
        dirty = [];
        for (const conn of list) {
            const pending = conn.pending!;
            conn.pending = null;
            if (conn.ws.readyState !== 1) {
                continue;
            }

            conn.raw.write(pending.length === 1 ? pending[0]! : Buffer.concat(pending));
        }
    };

    return createWsTarget((subscribers, path, message) => {

        const frame = textFrame(JSON.stringify({ type: 'pub', path, message }));
        for (const conn of subscribers) {
            if (conn.pending) {
                conn.pending.push(frame);
            }
            else {
                conn.pending = [frame];
                dirty.push(conn);
            }
        }

        if (!scheduled) {
            scheduled = true;
            process.nextTick(flush);
        }
    }, options);
};
