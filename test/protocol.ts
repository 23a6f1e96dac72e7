// Unit tests of the wire contract: every field of every client message is checked at the edge and a
// failure names the field (and the id, when it was readable, so the client can correlate it).

import * as Code from '@hapi/code';
import * as Lab from '@hapi/lab';

import { ChunkAssembler, EncodedPayload, ProtocolError, chunk, defaultLimits, encode, parseClientMessage, validateClientMessage, validateServerMessage } from '../lib/protocol';

const { expect } = Code;
const lab = Lab.script();
export { lab };
const { describe, it } = lab;

// Returns the ProtocolError thrown by validating `raw`.
const fails = (raw: unknown, limits = defaultLimits): ProtocolError => {

    try {
        validateClientMessage(raw, limits);
    }
    catch (err) {
        expect(err).to.be.an.instanceof(ProtocolError);
        return err as ProtocolError;
    }

    throw new Error('Expected a protocol error for ' + JSON.stringify(raw));
};

describe('protocol', () => {

    describe('parseClientMessage()', () => {

        it('rejects text that is not JSON and JSON that is not an object', () => {

            for (const text of ['', '{', 'nul', '+{"type":"ping"', '!}', '\u0000', 'null', '1', '"hello"', '[]', '[{"type":"ping","id":1}]', 'true', '1e999']) {
                expect(() => parseClientMessage(text), text).to.throw(ProtocolError, 'Cannot parse message');
            }

            expect(parseClientMessage('{"type":"ping","id":1}')).to.equal({ type: 'ping', id: 1 });
        });

        it('survives deep nesting and huge numbers', () => {

            const deep = '['.repeat(100000) + ']'.repeat(100000);
            expect(() => parseClientMessage(deep)).to.throw(ProtocolError);
            const message = parseClientMessage('{"type":"message","id":1,"message":' + '{"a":'.repeat(10000) + '1' + '}'.repeat(10000) + '}');
            expect(message.type).to.equal('message');
            expect(() => parseClientMessage('{"type":"ping","id":1e400}')).to.throw('Message id must be an integer or a short string');
        });
    });

    describe('validateClientMessage()', () => {

        it('checks type and id on every message', () => {

            expect(fails({ id: 1 })).to.include({ field: 'type', id: 1, type: undefined });
            expect(fails({ type: '', id: 'x' })).to.include({ field: 'type', id: 'x' });
            expect(fails({ type: 5, id: {} })).to.include({ field: 'type', id: undefined });
            expect(fails({ type: 'bogus', id: 2 })).to.include({ message: 'Unknown message type', field: 'type', type: 'bogus', id: 2 });

            for (const id of [undefined, null, '', 0]) {
                expect(fails({ type: 'ping', id })).to.include({ message: 'Message missing id', field: 'id', type: 'ping', id: undefined });
            }

            for (const id of [1.5, -0.5, NaN, Infinity, 2 ** 53, {}, [], true, 'x'.repeat(65)]) {
                expect(fails({ type: 'ping', id })).to.include({ message: 'Message id must be an integer or a short string', field: 'id' });
            }

            expect(validateClientMessage({ type: 'ping', id: -1 })).to.equal({ type: 'ping', id: -1 });
            expect(validateClientMessage({ type: 'ping', id: 'x'.repeat(64) })).to.equal({ type: 'ping', id: 'x'.repeat(64) });
            expect(validateClientMessage({ type: 'ping', id: Number.MAX_SAFE_INTEGER, junk: 1 })).to.equal({ type: 'ping', id: Number.MAX_SAFE_INTEGER });
        });

        it('checks hello', () => {

            expect(validateClientMessage({ type: 'hello', id: 1, version: '2', auth: null })).to.equal({ type: 'hello', id: 1, version: '2' });
            expect(validateClientMessage({ type: 'hello', id: 1, version: '1', auth: 'token', subs: ['/a'] })).to.equal({ type: 'hello', id: 1, version: '1', auth: 'token', subs: ['/a'] });

            expect(fails({ type: 'hello', id: 1 })).to.include({ message: 'Incorrect protocol version (expected 2 but received none)', field: 'version', id: 1 });
            expect(fails({ type: 'hello', id: 1, version: 2 })).to.include({ message: 'Incorrect protocol version (expected 2 but received 2)', field: 'version' });
            expect(fails({ type: 'hello', id: 1, version: null })).to.include({ field: 'version' });

            expect(fails({ type: 'hello', id: 1, version: '2', subs: '/a' })).to.include({ field: 'subs', type: 'hello', id: 1 });
            expect(fails({ type: 'hello', id: 1, version: '2', subs: [5] })).to.include({ message: 'Message subs must be a non-empty string', field: 'subs' });
            expect(fails({ type: 'hello', id: 1, version: '2', subs: ['a'] })).to.include({ message: 'Message subs must start with /', field: 'subs' });
            expect(fails({ type: 'hello', id: 1, version: '2', subs: [''] })).to.include({ field: 'subs' });
            expect(fails({ type: 'hello', id: 1, version: '2', subs: ['/' + 'a'.repeat(1024)] })).to.include({ message: 'Message subs is longer than 1024 characters' });
            expect(fails({ type: 'hello', id: 1, version: '2', subs: ['/a', '/b', '/c'] }, { ...defaultLimits, maxSubscriptions: 2 })).to.include({ message: 'Message subs must be an array of at most 2 paths' });
        });

        it('checks hello extensions', () => {

            const position = { epoch: 'e', offset: 3 };
            expect(validateClientMessage({ type: 'hello', id: 1, version: '2', pulse: { recovery: true, expiry: true, groups: true, positions: { '/a': position }, other: 1 } }))
                .to.equal({ type: 'hello', id: 1, version: '2', pulse: { recovery: true, expiry: true, groups: true, positions: { '/a': position } } });
            expect(validateClientMessage({ type: 'hello', id: 1, version: '2', pulse: { recovery: 'yes' } })).to.equal({ type: 'hello', id: 1, version: '2', pulse: {} });

            expect(fails({ type: 'hello', id: 1, version: '2', pulse: [] })).to.include({ field: 'pulse' });
            expect(fails({ type: 'hello', id: 1, version: '2', pulse: { positions: [] } })).to.include({ field: 'pulse.positions' });
            expect(fails({ type: 'hello', id: 1, version: '2', pulse: { positions: { a: position } } })).to.include({ field: 'pulse.positions', message: 'Message pulse.positions must start with /' });
            expect(fails({ type: 'hello', id: 1, version: '2', pulse: { positions: { '/a': { epoch: 1, offset: 1 } } } })).to.include({ field: 'pulse.positions' });
            expect(fails({ type: 'hello', id: 1, version: '2', pulse: { positions: { '/a': { epoch: 'x'.repeat(65), offset: 1 } } } })).to.include({ field: 'pulse.positions' });
            expect(fails({ type: 'hello', id: 1, version: '2', pulse: { positions: { '/a': { epoch: 'e', offset: -1 } } } })).to.include({ field: 'pulse.positions' });
            expect(fails({ type: 'hello', id: 1, version: '2', pulse: { positions: { '/a': { epoch: 'e', offset: 0.5 } } } })).to.include({ field: 'pulse.positions' });
            expect(fails({ type: 'hello', id: 1, version: '2', pulse: { positions: { '/a': null } } })).to.include({ field: 'pulse.positions' });
            expect(fails({ type: 'hello', id: 1, version: '2', pulse: { positions: { '/a': position, '/b': position } } }, { ...defaultLimits, maxSubscriptions: 1 })).to.include({ field: 'pulse.positions', message: 'Message pulse.positions has more than 1 paths' });
        });

        it('checks reauth', () => {

            expect(validateClientMessage({ type: 'reauth', id: 1, auth: { headers: {} } })).to.equal({ type: 'reauth', id: 1, auth: { headers: {} } });
            expect(fails({ type: 'reauth', id: 1 })).to.include({ message: 'Message missing auth', field: 'auth' });
            expect(fails({ type: 'reauth', id: 1, auth: null })).to.include({ field: 'auth' });
        });

        it('checks request', () => {

            expect(validateClientMessage({ type: 'request', id: 1, method: 'GET', path: '/', headers: null })).to.equal({ type: 'request', id: 1, method: 'GET', path: '/' });
            expect(validateClientMessage({ type: 'request', id: 1, method: 'post', path: 'route-id', headers: { 'x-a': 'b' }, payload: null }))
                .to.equal({ type: 'request', id: 1, method: 'post', path: 'route-id', headers: { 'x-a': 'b' }, payload: null });

            for (const method of [undefined, null, '', 5]) {
                expect(fails({ type: 'request', id: 1, method, path: '/' })).to.include({ message: 'Message missing method', field: 'method', type: 'request', id: 1 });
            }

            for (const method of ['GET /', 'G\r\nX', '1GET', 'ü', 'A'.repeat(33)]) {
                expect(fails({ type: 'request', id: 1, method, path: '/' })).to.include({ message: 'Message method must be an HTTP method token', field: 'method' });
            }

            for (const path of [undefined, null, '']) {
                expect(fails({ type: 'request', id: 1, method: 'GET', path })).to.include({ message: 'Message missing path', field: 'path' });
            }

            expect(fails({ type: 'request', id: 1, method: 'GET', path: 5 })).to.include({ field: 'path' });
            expect(fails({ type: 'request', id: 1, method: 'GET', path: ['/'] })).to.include({ field: 'path' });
            expect(fails({ type: 'request', id: 1, method: 'GET', path: '/' + 'a'.repeat(10) }, { ...defaultLimits, maxPathLength: 10 })).to.include({ field: 'path', message: 'Message path is longer than 10 characters' });

            for (const headers of ['x', [], 5, true]) {
                expect(fails({ type: 'request', id: 1, method: 'GET', path: '/', headers })).to.include({ field: 'headers', message: 'Message headers must be an object of strings' });
            }

            for (const headers of [{ a: 1 }, { a: null }, { a: {} }, { 'a b': 'x' }, { 'a\r\nb': 'x' }, { '': 'x' }, { a: 'x'.repeat(8193) }]) {
                expect(fails({ type: 'request', id: 1, method: 'GET', path: '/', headers })).to.include({ field: 'headers' });
            }

            const many: Record<string, string> = {};
            for (let i = 0; i < 101; ++i) {
                many['h' + i] = 'x';
            }

            expect(fails({ type: 'request', id: 1, method: 'GET', path: '/', headers: many })).to.include({ field: 'headers', message: 'Message headers has more than 100 fields' });
            expect(fails({ type: 'request', id: 1, method: 'GET', path: '/', headers: { ['x'.repeat(500)]: 1 } }).message).to.equal(`Message headers.${'x'.repeat(64)} must be a string header`);
        });

        it('checks message, sub and unsub', () => {

            expect(validateClientMessage({ type: 'message', id: 1 })).to.equal({ type: 'message', id: 1, message: undefined });
            expect(validateClientMessage({ type: 'message', id: 1, message: [1] })).to.equal({ type: 'message', id: 1, message: [1] });

            expect(validateClientMessage({ type: 'sub', id: 1, path: '/a', position: { epoch: 'e', offset: 0 } })).to.equal({ type: 'sub', id: 1, path: '/a', position: { epoch: 'e', offset: 0 } });
            expect(fails({ type: 'sub', id: 1 })).to.include({ field: 'path', type: 'sub', id: 1 });
            expect(fails({ type: 'sub', id: 1, path: 'a' })).to.include({ field: 'path', message: 'Message path must start with /' });
            expect(fails({ type: 'sub', id: 1, path: '/a', position: 'x' })).to.include({ field: 'position' });

            expect(validateClientMessage({ type: 'unsub', id: 1, path: '/a' })).to.equal({ type: 'unsub', id: 1, path: '/a' });
            expect(fails({ type: 'unsub', id: 1, path: {} })).to.include({ field: 'path', type: 'unsub' });
        });

        it('never returns what it did not check (no prototype pollution through headers)', () => {

            const message = validateClientMessage(JSON.parse('{"type":"request","id":1,"method":"GET","path":"/","headers":{"a":"b"},"__proto__":{"polluted":1}}'));
            expect(message).to.equal({ type: 'request', id: 1, method: 'GET', path: '/', headers: { a: 'b' } });
            expect(Object.getPrototypeOf((message as any).headers)).to.equal(Object.prototype);
            expect(fails(JSON.parse('{"type":"request","id":1,"method":"GET","path":"/","headers":{"__proto__":"x"}}'))).to.include({ field: 'headers' });
            expect(fails(JSON.parse('{"type":"request","id":1,"method":"GET","path":"/","headers":{"__proto__":{"polluted":"x"}}}'))).to.include({ field: 'headers' });
            expect(({} as any).polluted).to.not.exist();
        });
    });

    describe('validateServerMessage()', () => {

        it('accepts what the server sends and rejects the rest', () => {

            expect(validateServerMessage({ type: 'pub', path: '/a', message: 1, position: { epoch: 'e', offset: 1 } })).to.equal({ type: 'pub', path: '/a', message: 1, position: { epoch: 'e', offset: 1 } });
            expect(validateServerMessage({ statusCode: 400, payload: {} })).to.equal({ statusCode: 400, payload: {} });
            expect(() => validateServerMessage(null)).to.throw(ProtocolError, 'Received a message that is not an object');
            expect(() => validateServerMessage([])).to.throw(ProtocolError);
            expect(() => validateServerMessage({ type: 1 })).to.throw('Received a message with an invalid type');
            expect(() => validateServerMessage({ type: 'request', id: 1, statusCode: '200' })).to.throw('Received a message with an invalid statusCode');
            expect(() => validateServerMessage({ type: 'pub', message: 1 })).to.throw('Received a pub message without a path');
            expect(() => validateServerMessage({ type: 'revoke' })).to.throw('Received a revoke message without a path');
            expect(() => validateServerMessage({ type: 'pub', path: '/a', position: { epoch: 'e' } })).to.throw(ProtocolError);
        });

        it('checks join messages (groups extension)', () => {

            expect(validateServerMessage({ type: 'join', path: '/a' })).to.equal({ type: 'join', path: '/a' });
            expect(validateServerMessage({ type: 'join', path: '/a', pulse: { position: { epoch: 'e', offset: 0 } } })).to.equal({ type: 'join', path: '/a', pulse: { position: { epoch: 'e', offset: 0 } } });
            expect(() => validateServerMessage({ type: 'join' })).to.throw('Received a join message without a path');
            expect(() => validateServerMessage({ type: 'join', path: '/a', pulse: 1 })).to.throw('Received a join message with an invalid pulse');
            expect(() => validateServerMessage({ type: 'join', path: '/a', pulse: {} })).to.throw(ProtocolError, /pulse.position must be an object/);
        });
    });

    describe('encode()', () => {

        it('encodes server messages, placing an already encoded request payload as is', () => {

            expect(encode({ type: 'sub', id: 2, path: '/a', pulse: { position: { epoch: 'e', offset: 3 } } })).to.equal('{"type":"sub","id":2,"path":"/a","pulse":{"position":{"epoch":"e","offset":3}}}');
            expect(encode({ statusCode: 404, payload: { error: 'Not Found', message: 'Not Found' }, headers: undefined, type: 'bogus', id: 'x' })).to.equal('{"statusCode":404,"payload":{"error":"Not Found","message":"Not Found"},"type":"bogus","id":"x"}');

            const json = new EncodedPayload('{"raw" : [1]}');
            expect(encode({ type: 'request', id: 1, statusCode: 200, payload: json, headers: { a: 'b' } })).to.equal('{"type":"request","id":1,"statusCode":200,"payload":{"raw" : [1]},"headers":{"a":"b"}}');
            expect(encode({ type: 'request', id: 1, statusCode: 200, payload: json })).to.equal('{"type":"request","id":1,"statusCode":200,"payload":{"raw" : [1]}}');
            expect(encode({ type: 'request', id: 1, statusCode: 200, payload: { raw: [1] } })).to.equal('{"type":"request","id":1,"statusCode":200,"payload":{"raw":[1]}}');

            // A pub whose message is JSON already (presence lists and diffs) is placed as it is, where JSON.stringify puts it
            const message = { a: [1, 'é'], b: null };
            const position = { epoch: 'e', offset: 3 };
            expect(encode({ type: 'pub', path: '/a"b', message: new EncodedPayload(JSON.stringify(message)) })).to.equal(encode({ type: 'pub', path: '/a"b', message }));
            expect(encode({ type: 'pub', path: '/a', message: new EncodedPayload(JSON.stringify(message)), position })).to.equal(encode({ type: 'pub', path: '/a', message, position }));
            expect(() => encode({ type: 'update', message: 1n })).to.throw(TypeError);
        });
    });

    describe('chunks', () => {

        it('splits and reassembles, bounded', () => {

            expect(chunk('abcdefg', 3)).to.equal(['+abc', '+def', '!g']);
            expect(chunk('abc', 3)).to.equal(['!abc']);

            const assembler = new ChunkAssembler(10);
            expect(assembler.push('{"a":1}')).to.equal('{"a":1}');
            expect(assembler.push('+abc')).to.be.null();
            expect(assembler.pending).to.be.true();
            expect(assembler.push('!def')).to.equal('abcdef');
            expect(assembler.pending).to.be.false();

            expect(assembler.push('+abc')).to.be.null();
            expect(() => assembler.push('{}')).to.throw(ProtocolError, 'Received an incomplete message');
            expect(assembler.pending).to.be.false();

            expect(assembler.push('+abcdef')).to.be.null();
            expect(() => assembler.push('+ghijk')).to.throw(ProtocolError, 'Chunked message exceeds 10 characters');
            expect(assembler.push('!x')).to.equal('x');
        });
    });
});
