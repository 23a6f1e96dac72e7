// Tunnelled requests: a `request` message becomes server.inject() with the socket's credentials and the
// identity of its upgrade request, and the response becomes the reply.

import type { IncomingMessage } from 'node:http';
import { performance } from 'node:perf_hooks';

import * as Boom from '@hapi/boom';
import type { Server } from '@hapi/hapi';

import { EncodedPayload, encode } from '../protocol';
import type { MessageId, TunnelRequest } from '../protocol';
import type { SocketAuth } from './auth';

export interface TunnelSettings {
    endpoint: string | null;                      // the auth endpoint: never reachable through the tunnel
    headers: string[] | '*' | null;               // response headers replies carry
    tunnelHeaders: string[];                      // connection headers a message may set itself
    answered?(method: string, route: string, statusCode: number, ms: number): void;   // the route that answered, for metrics
}

// What a tunnelled request reads of its socket.
export interface Tunnelling {
    readonly auth: SocketAuth;
    readonly authenticated: boolean;
    readonly info: { remoteAddress: string };
    readonly upgradeHeaders: Readonly<Record<string, string>>;
}

const identityNames = new Set(['host', 'cookie', 'forwarded', 'via', 'x-real-ip', 'x-client-ip', 'true-client-ip', 'cf-connecting-ip']);
const framingHeaders = new Set(['content-length', 'transfer-encoding', 'connection', 'upgrade', 'keep-alive', 'te', 'trailer', 'expect']);

// Headers that say who the connection is (host, cookies, forwarded addresses): tunnelled requests inherit
// them from the upgrade request.
const isIdentityHeader = (name: string): boolean => identityNames.has(name) || name.startsWith('x-forwarded-');

const isConnectionHeader = (name: string): boolean => isIdentityHeader(name) || framingHeaders.has(name);

// Sockets without cookies mostly come with the same few header sets (one host, no proxy): they share one frozen
// object per set instead of a copy each (about 90 bytes a socket). Bounded: emptied when full.
const shared = new Map<string, Readonly<Record<string, string>>>();
const maxShared = 256;

// The upgrade request's identity headers, as every tunnelled request of the socket inherits them (read only).
export const identityHeaders = (req: IncomingMessage): Readonly<Record<string, string>> => {

    const headers: Record<string, string> = {};
    let key = '';
    for (const name in req.headers) {
        if (isIdentityHeader(name)) {
            const value = req.headers[name] as string;                  // Node joins repeated ones (only set-cookie is a list)
            headers[name] = value;
            key += `${name}\n${value}\n`;                               // neither can hold a line break
        }
    }

    if (headers.cookie !== undefined) {
        return headers;                                              // one per user: nothing to share
    }

    const known = shared.get(key);
    if (known) {
        return known;
    }

    if (shared.size >= maxShared) {
        shared.clear();
    }

    shared.set(key, Object.freeze(headers));
    return headers;
};

export class Tunnel {

    constructor(private readonly server: Server, private readonly settings: TunnelSettings) { }

    // The encoded reply to `request`; throws a Boom error for the error reply.
    async inject(socket: Tunnelling, request: TunnelRequest): Promise<string> {

        let { method, path } = request;
        if (request.headers && Object.keys(request.headers).some((name) => name.toLowerCase() === 'authorization')) {
            throw Boom.badRequest('Cannot include an Authorization header');
        }

        if (path[0] !== '/') {                                       // route id
            const route = this.server.lookup(path);
            if (!route) {
                throw Boom.notFound();
            }

            if (route.method === '*') {
                throw Boom.badRequest('Cannot use route id with wildcard method route config');
            }

            path = route.path;
            method = route.method;
        }

        if (path.split('?')[0] === this.settings.endpoint) {
            throw Boom.notFound();
        }

        let res: Awaited<ReturnType<Server['inject']>>;
        const started = performance.now();
        try {
            res = await this.server.inject({
                method,
                url: path,
                payload: request.payload as any,
                headers: this.requestHeaders(socket.upgradeHeaders, request.headers),
                auth: socket.authenticated ? { credentials: socket.auth.credentials as any, artifacts: socket.auth.artifacts as any, strategy: socket.auth.strategy! } : undefined,
                validate: false,
                plugins: { nes: { socket } } as any,                   // the application's request.socket
                remoteAddress: socket.info.remoteAddress
            });
        }
        catch {
            // Handler failures come back as 500 responses; a rejection means the request itself could not be
            // built (a payload nested too deeply to encode, an unusable url): the client's fault.
            throw Boom.badRequest('Invalid request');
        }

        this.settings.answered?.(res.request.route.method, res.request.route.path, res.statusCode, performance.now() - started);
        return this.encodeResponse(request.id, res.statusCode, res.result, res.headers);
    }

    // The headers of a request made for a socket (tunnelled, or its direct auth): what identifies the
    // connection (host, forwarded addresses, cookies) comes from the upgrade request; the client may set such
    // a header only where the application allows it (tunnelHeaders). Framing headers (content-length,
    // transfer-encoding) are shot's to compute.
    requestHeaders(upgradeHeaders: Record<string, string>, given: Record<string, string> | undefined): Record<string, string> {

        const headers: Record<string, string> = { ...upgradeHeaders };
        for (const name in given) {
            const lower = name.toLowerCase();
            if (!isConnectionHeader(lower) || this.settings.tunnelHeaders.includes(lower)) {
                headers[lower] = given[name]!;
            }
        }

        return headers;
    }

    private encodeResponse(id: MessageId, statusCode: number, result: unknown, headers: Record<string, unknown>): string {

        // A handler that already returned JSON text is sent as is, not encoded twice (as nes does).
        // hapi always sets a string content-type on a string result.
        const json = typeof result === 'string' && String(headers['content-type']).startsWith('application/json');
        try {
            return encode({ type: 'request', id, statusCode, payload: json ? new EncodedPayload(result) : result, headers: this.filterHeaders(headers) });
        }
        catch {
            this.server.log(['pulse', 'serialization', 'error'], 'request');
            throw Boom.internal('Failed serializing message');
        }
    }

    // The response headers a reply carries (error replies too), as the `headers` option says.
    filterHeaders(headers: Record<string, unknown>): Record<string, unknown> | undefined {

        const filter = this.settings.headers;
        if (!filter) {
            return undefined;
        }

        if (filter === '*') {
            return headers;
        }

        const filtered: Record<string, unknown> = {};
        for (const name of Object.keys(headers)) {
            if (filter.includes(name.toLowerCase())) {
                filtered[name] = headers[name];
            }
        }

        return filtered;
    }
}
