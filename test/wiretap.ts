// A tap on a server's TCP connections: everything the server writes to each one (the upgrade response, then the
// WebSocket frames), parsed and inflated here so that tests see what went on the wire, not what a client library
// made of it.

import type * as Net from 'node:net';
import * as Zlib from 'node:zlib';

import * as Code from '@hapi/code';
import type * as Hapi from '@hapi/hapi';

const { expect } = Code;

export const trailer = Buffer.from([0x00, 0x00, 0xff, 0xff]);

export interface WireMessage {
    compressed: boolean;
    wire: number;                                   // payload bytes on the wire
    payload: Buffer;                                // as sent (compressed or not)
    text: string;                                   // inflated
}

// Everything the server writes to one TCP connection: the upgrade response, then the frames.
export class Connection {

    private readonly chunks: Buffer[] = [];

    constructor(socket: Net.Socket) {

        const write = socket.write;
        socket.write = function (this: Net.Socket, chunk: any, ...rest: any[]) {

            (this as any).tapped.chunks.push(Buffer.from(chunk));
            return (write as any).call(this, chunk, ...rest);
        } as any;

        (socket as any).tapped = this;
    }

    private get bytes(): Buffer {

        return Buffer.concat(this.chunks);
    }

    get isWebSocket(): boolean {

        return this.handshake.startsWith('HTTP/1.1 101');
    }

    get handshake(): string {

        const bytes = this.bytes;
        return bytes.subarray(0, bytes.indexOf('\r\n\r\n')).toString();
    }

    // Text messages (each one final frame), inflated with a window of `bits`.
    messages(bits = 15): WireMessage[] {

        const bytes = this.bytes;
        const messages: WireMessage[] = [];
        let at = bytes.indexOf('\r\n\r\n') + 4;
        while (at < bytes.length) {
            const first = bytes[at]!;
            let length = bytes[at + 1]! & 0x7f;
            let header = 2;
            if (length === 126) {
                length = bytes.readUInt16BE(at + 2);
                header = 4;
            }
            else if (length === 127) {
                length = Number(bytes.readBigUInt64BE(at + 2));
                header = 10;
            }

            const payload = bytes.subarray(at + header, at + header + length);
            at += header + length;
            expect(first & 0x80).to.equal(0x80);                                  // final: one frame a message
            if ((first & 0x0f) !== 1) {
                continue;                                                           // close frames
            }

            const compressed = (first & 0x40) !== 0;
            const text = compressed ? Zlib.inflateRawSync(Buffer.concat([payload, trailer]), { windowBits: bits, finishFlush: Zlib.constants.Z_SYNC_FLUSH }).toString() : payload.toString();
            messages.push({ compressed, wire: length, payload, text });
        }

        return messages;
    }

    find(match: string, bits?: number): WireMessage {

        const found = this.messages(bits).filter((message) => message.text.includes(match));
        expect(found.length).to.equal(1);
        return found[0]!;
    }
}

export const tap = (srv: Hapi.Server): Connection[] => {

    const connections: Connection[] = [];
    srv.listener.on('connection', (socket: Net.Socket) => connections.push(new Connection(socket)));
    return connections;
};

