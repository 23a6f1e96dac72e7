// The inspector: an opt-in page served by the plugin, for a person at a browser. A client console (the
// package's own browser client, every frame shown) and an operator view of this node (sockets, users, paths,
// limits hit, recent disconnects), read from GET <path>/state once a second.

import { readFileSync } from 'node:fs';
import { join } from 'node:path';

import * as Boom from '@hapi/boom';
import * as Hoek from '@hapi/hoek';
import type { Request, ResponseToolkit, RouteOptionsAccess, Server } from '@hapi/hapi';

import type { Disconnect, Metrics } from './metrics';
import { receivedTypes, sentTypes } from './metrics';
import { page, script } from './inspector-page';
import type { Presence } from './presence';
import type { Connection } from './socket';
import type { Topic } from './subscriptions';

export interface InspectorSettings {
    path: string;
    auth: false | string | RouteOptionsAccess;      // required: false only when the application says so
    recentDisconnects: number;
    maxListed: number;                               // sockets, users and paths listed at most
}

// What the inspector reads from the node (the listener provides it).
export interface InspectorHost {
    readonly sockets: Map<string, Connection>;
    readonly subscriptions: { readonly topics: Map<string, Topic>; readonly presence: Pick<Presence, 'localMembers'> };
    readonly metrics: Metrics | null;               // never null while the inspector is on
    stats(): { sockets: number; users: number; topics: number; subscriptions: number; pendingUpgrades: number };
}

interface Listed<T> {
    total: number;
    shown: T[];
}

export interface InspectorState {
    node: { id: string };
    auth: { type: string; endpoint: string } | null;
    metrics: { exporting: boolean };
    totals: ReturnType<InspectorHost['stats']>;
    sockets: Listed<{ id: string; user: string | null; remoteAddress: string; connectedAt: number; subscriptions: number; inFlight: number }>;
    users: Listed<{ user: string; sockets: number }>;
    paths: Listed<{ path: string; route: string; subscribers: number; presence: { members: number; anonymous: number } | null }>;      // presence: this node's members (null: presence off)
    limits: Record<string, number>;
    upgrades: Record<string, number>;
    traffic: Record<string, { received: number; receivedBytes: number; sent: number; sentBytes: number }>;
    disconnects: Disconnect[];
}

const bundlePath = join(__dirname, '..', '..', 'browser', 'hapi-pulse.min.js');

// The page loads only its own scripts and talks only to this origin.
const pageHeaders = {
    'content-security-policy': "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    'cache-control': 'no-store',
    'referrer-policy': 'no-referrer',
    'x-content-type-options': 'nosniff'
};

const top = <T>(items: Iterable<T>, total: number, max: number): Listed<T> => {

    const shown: T[] = [];
    for (const item of items) {
        if (shown.length === max) {
            break;
        }

        shown.push(item);
    }

    return { total, shown };
};

export const state = (server: Server, host: InspectorHost, settings: InspectorSettings, auth: { type: string; endpoint: string } | null): InspectorState => {

    const sockets = function* () {

        for (const socket of host.sockets.values()) {
            yield { id: socket.id, user: socket.user, remoteAddress: socket.info.remoteAddress, connectedAt: socket.connectedAt, subscriptions: socket.subscriptions.size, inFlight: socket.inFlight };
        }
    };

    const perUser = new Map<string, number>();
    for (const socket of host.sockets.values()) {
        if (socket.user !== null) {
            perUser.set(socket.user, (perUser.get(socket.user) ?? 0) + 1);
        }
    }

    // Most subscribed paths first.
    const { topics, presence } = host.subscriptions;
    const paths = [...topics.values()].map((topic) => ({ path: topic.path, route: topic.route.pattern, subscribers: topic.sockets.size, presence: topic.route.presence ? presence.localMembers(topic.path) : null }));
    paths.sort((a, b) => b.subscribers - a.subscribers);

    const metrics = host.metrics!;                     // made whenever the inspector is on
    const traffic: InspectorState['traffic'] = {};
    for (const type of new Set([...receivedTypes, ...sentTypes])) {
        const received = receivedTypes.indexOf(type as never);
        const sent = sentTypes.indexOf(type as never);
        traffic[type] = {
            received: received === -1 ? 0 : metrics.receivedMessages[received]!,
            receivedBytes: received === -1 ? 0 : metrics.receivedBytes[received]!,
            sent: sent === -1 ? 0 : metrics.sentMessages[sent]!,
            sentBytes: sent === -1 ? 0 : metrics.sentBytes[sent]!
        };
    }

    return {
        node: { id: server.info.id },
        auth,
        metrics: { exporting: metrics.exporting },
        totals: host.stats(),
        sockets: top(sockets(), host.sockets.size, settings.maxListed),
        users: top([...perUser].map(([user, count]) => ({ user, sockets: count })).sort((a, b) => b.sockets - a.sockets), perUser.size, settings.maxListed),
        paths: top(paths, paths.length, settings.maxListed),
        limits: { ...metrics.limitHits },
        upgrades: { ...metrics.upgradesRejected },
        traffic,
        disconnects: [...metrics.disconnects].reverse()
    };
};

export const register = (server: Server, host: InspectorHost, settings: InspectorSettings, auth: { type: string; endpoint: string } | null): void => {

    Hoek.assert(settings.auth !== undefined, 'inspector.auth is required');
    const base = settings.path;
    const bundle = readFileSync(bundlePath);            // the package's browser client, built with it

    // Never through a socket's tunnel: a socket's credentials are not the inspector's (hapi does not check which
    // strategy injected credentials came from).
    const direct = (request: Request): void => {

        if (request.plugins.nes?.socket) {
            throw Boom.notFound();
        }
    };

    const route = (path: string, handler: (request: Request, h: ResponseToolkit) => unknown) => {

        server.route({
            method: 'GET',
            path: base + path,
            options: {
                auth: settings.auth,
                handler: (request, h) => {

                    direct(request);
                    return handler(request, h);
                }
            }
        });
    };

    route('', (_request, h) => withHeaders(h.response(page(base)).type('text/html; charset=utf-8')));
    route('/inspector.js', (_request, h) => withHeaders(h.response(script(base)).type('application/javascript; charset=utf-8')));
    route('/client.js', (_request, h) => withHeaders(h.response(bundle).type('application/javascript; charset=utf-8')));
    route('/state', (_request, h) => withHeaders(h.response(state(server, host, settings, auth))));
};

const withHeaders = <T extends { header(name: string, value: string): T }>(response: T): T => {

    for (const [name, value] of Object.entries(pageHeaders)) {
        response.header(name, value);
    }

    return response;
};
