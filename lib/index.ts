// The hapi plugin: validates options once, picks the broker, and decorates server and request
// exactly as @hapi/nes does.

import * as Hoek from '@hapi/hoek';
import type { AppCredentials, AuthArtifacts, AuthCredentials, Plugin, Request, Server, UserCredentials } from '@hapi/hapi';

import { MemoryBroker } from './brokers/memory';
import * as Auth from './server/auth';
import { userKey } from './server/auth';
import * as Inspector from './server/inspector';
import { Listener } from './server/listener';
import { settle } from './settings';
import type { PluginOptions } from './settings';
import type { SubscribeUserOptions } from './server/groups';
import type { ConnectOptions, DisconnectLog, ErrorType as ClientErrorType, PulseError, RequestOptions, RequestResponse, SubscriptionHandler } from './client';
import type { Socket, Socket as PulseSocket } from './server/socket';
import type { SubscriptionOptions, SubscriptionOptions as PulseSubscriptionOptions } from './server/subscriptions';

export type { Broker, BrokerSink, PublishEnvelope, BroadcastEnvelope, HistoryOptions, PathPublish, Recovery } from './broker';
export type { PresenceAdmission, PresenceChange, PresenceCount, PresenceEntry, PresenceMemberEntry, PresenceNodeUser, PresenceStore } from './broker';
export type { PresenceMemberInfo, PresenceOptions, PresenceStats } from './server/presence';
import type { PresenceMemberInfo, PresenceStats } from './server/presence';
import type { PresenceCount } from './broker';
export { presencePath } from './protocol';
export type { PresenceDiff, PresenceList, PresenceMember, PresenceMessage } from './protocol';
export type { GroupStore, MembershipCommand } from './broker';
export type { SubscribeUserOptions } from './server/groups';
export { MemoryBroker } from './brokers/memory';
export type { MemoryBrokerOptions } from './brokers/memory';
export type { InspectorOptions, PluginOptions } from './settings';
export type { MeterProviderLike } from './server/metrics';
export { CloseCode } from './protocol';
import { isWellFormed, presencePrefix } from './protocol';
export type { Socket, SocketAuth, SocketInfo } from './server/socket';
export type { SubscriptionOptions, FilterOptions, FilterResult } from './server/subscriptions';

// The client, as @hapi/nes exports it beside the plugin. Its own entry (hapi-pulse/client) loads nothing else.
export { Client, PulseError } from './client';
export type {
    ClientAuth, ClientAuthProvider, ClientOptions, ConnectOptions, DisconnectLog, ErrorType, MessageResponse, NesError,
    PresenceFollower, RequestOptions, RequestResponse, SubscriptionFlags, SubscriptionHandler
} from './client';

// The type names of @hapi/nes's `Nes` namespace, so that code typed against nes compiles unchanged.
export namespace Nes {
    export type ClientConnectOptions = ConnectOptions;
    export type ClientRequestOptions = RequestOptions;
    export type ErrorType = ClientErrorType;
    export type NesError = PulseError;
    export type NesLog = DisconnectLog;
    export type NesReqRes<R> = RequestResponse<R>;
    export type NesSubHandler = SubscriptionHandler;
    export type ErrorCodes = {
        1000: 'Normal closure'; 1001: 'Going away'; 1002: 'Protocol error'; 1003: 'Unsupported data'; 1004: 'Reserved';
        1005: 'No status received'; 1006: 'Abnormal closure'; 1007: 'Invalid frame payload data';
        1008: 'Policy violation'; 1009: 'Message too big'; 1010: 'Mandatory extension'; 1011: 'Internal server error';
        1015: 'TLS handshake';
    };

    export interface SocketAuthObject<U extends object = UserCredentials, A extends object = AppCredentials> {
        isAuthenticated: boolean;
        credentials: AuthCredentials<U, A> | null;
        artifacts: AuthArtifacts | null;
    }

    export type Socket<App extends object = {}, Auth extends SocketAuthObject<any, any> = SocketAuthObject<any, any>> = PulseSocket & { app: App; auth: Auth };
    export type SubscriptionOptions<_S extends Socket = Socket> = PulseSubscriptionOptions;
    export type PluginOptions<_App extends object = {}, _Auth extends SocketAuthObject<any, any> = SocketAuthObject<any, any>> = PulsePluginOptions;
    export interface ClientOpts { onDisconnect?: (willReconnect: boolean, log: DisconnectLog) => void }
    export interface BroadcastOptions { user?: string }
    export interface PublishOptions { user?: string; internal?: unknown }
    export interface EachSocketOptions { subscription?: string; user?: string }
}

type PulsePluginOptions = PluginOptions;

const nesVersion = '14.0.1';                            // the @hapi/nes release this plugin stands in for

// Registry sizes of this server's node (read-only): open sockets, indexed users, subscribed paths, socket-path
// subscriptions and upgrades still waiting on onUpgrade. For dashboards, and for tests that prove nothing leaks.
export interface PulseStats {
    sockets: number;
    users: number;
    topics: number;
    subscriptions: number;
    pendingUpgrades: number;
}

// server.presence: cluster-wide queries on the paths of subscriptions declared with `presence`.
export interface PresenceApi {
    members(path: string): Promise<PresenceMemberInfo[]>;
    count(path: string): Promise<PresenceCount>;
    paths(user: string | number): Promise<string[]>;
    update(path: string, user: string | number, info: unknown): Promise<boolean>;
    stats(): Promise<PresenceStats>;
}

const listeners = new WeakMap<object, Listener>();

const listenerOf = (server: Server): Listener => {

    const listener = listeners.get(server.listener);
    Hoek.assert(listener, 'hapi-pulse is not registered on this server');
    return listener;
};

declare module '@hapi/hapi' {
    interface Server {
        broadcast(message: unknown, options?: { user?: string | number }): Promise<void>;
        subscription<Message = any, Internal = unknown>(path: string, options?: SubscriptionOptions<Message, Internal>): void;
        publish(path: string | string[], message: unknown, options?: { internal?: unknown; user?: string | number; once?: boolean }): Promise<void>;
        subscribeUser(user: string | number, paths: string | string[], options?: SubscribeUserOptions): Promise<void>;
        unsubscribeUser(user: string | number, paths: string | string[], options?: { message?: unknown }): Promise<void>;
        subscribeSocket(id: string, paths: string | string[]): Promise<void>;
        unsubscribeSocket(id: string, paths: string | string[], options?: { message?: unknown }): Promise<void>;
        groupMembers(path: string): Promise<string[]>;
        userGroups(user: string | number): Promise<string[]>;
        eachSocket(each: (socket: Socket) => unknown, options?: { subscription?: string; user?: string | number }): Promise<void>;
        pulseStats(): PulseStats;
        presence: PresenceApi;
    }

    interface Request {
        socket: Socket | null;
    }

    interface PluginsStates {
        nes?: { socket: Socket };
    }
}

const presenceApi = (listener: Listener): PresenceApi => {

    const presence = listener.subscriptions.presence;
    const presencePathOf = (path: string) => {

        const route = typeof path === 'string' && !path.startsWith(presencePrefix) ? listener.subscriptions.match(path)?.route : undefined;
        if (!route?.presence) {
            throw new Error(`Not a path of a subscription with presence: ${path}`);
        }

        return route.presence;
    };

    const userOf = (user: unknown): string => {

        const key = userKey(user);
        if (key === null) {
            throw new Error('Invalid user: must be a non-empty string or a number');
        }

        return key;
    };

    return {
        members: async (path) => (presencePathOf(path), presence.members(path)),
        count: async (path) => (presencePathOf(path), presence.count(path)),
        paths: async (user) => presence.paths(userOf(user)),
        update: async (path, user, info) => presence.update(path, userOf(user), info, presencePathOf(path)),
        stats: () => presence.stats()
    };
};

export const plugin: Plugin<PluginOptions> = {
    name: 'hapi-pulse',
    version: '0.1.0',
    requirements: { hapi: '>=21.0.0' },
    async register(server: Server, options: PluginOptions) {

        const settings = settle(options, MemoryBroker);                 // hapi passes {} when registered without options
        if (settings.auth) {
            Auth.registerEndpoint(server, settings.auth);
        }

        const listener = new Listener(server, settings, settings.broker);
        listeners.set(server.listener, listener);
        if (settings.inspector) {
            Inspector.register(server, listener, settings.inspector, settings.auth ? { type: settings.auth.type, endpoint: settings.auth.endpoint } : null);
        }

        server.ext('onPreStart', () => listener.start());
        server.ext('onPreStop', () => listener.stop());

        server.decorate('server', 'broadcast', function (this: Server, message: unknown, opts?: { user?: string | number }) {

            return listenerOf(this).broadcast(message, opts);
        });

        server.decorate('server', 'subscription', function (this: Server, path: string, opts?: SubscriptionOptions) {

            listenerOf(this).subscriptions.add(path, opts);
        });

        server.decorate('server', 'publish', function (this: Server, path: string | string[], message: unknown, opts?: { internal?: unknown; user?: string | number; once?: boolean }) {

            for (const one of Array.isArray(path) ? path : [path]) {
                Hoek.assert(typeof one === 'string' && one[0] === '/', 'Missing or invalid subscription path:', one || 'empty');
                Hoek.assert(isWellFormed(one), 'Subscription path must be well-formed Unicode:', one);
                Hoek.assert(!one.startsWith(presencePrefix + '/'), 'Cannot publish to a presence path:', one);
            }

            return listenerOf(this).publish(path, message, opts);
        });

        // Server-side subscriptions: argument errors reject, as every failure of these does.
        const groups = (server: Server, run: (listener: Listener) => Promise<any>) => Promise.resolve().then(() => run(listenerOf(server)));

        server.decorate('server', 'subscribeUser', function (this: Server, user: string | number, paths: string | string[], opts?: SubscribeUserOptions) {

            return groups(this, (listener) => listener.groups.subscribeUser(user, paths, opts));
        });

        server.decorate('server', 'unsubscribeUser', function (this: Server, user: string | number, paths: string | string[], opts?: { message?: unknown }) {

            return groups(this, (listener) => listener.groups.unsubscribeUser(user, paths, opts));
        });

        server.decorate('server', 'subscribeSocket', function (this: Server, id: string, paths: string | string[]) {

            return groups(this, (listener) => listener.groups.subscribeSocket(id, paths));
        });

        server.decorate('server', 'unsubscribeSocket', function (this: Server, id: string, paths: string | string[], opts?: { message?: unknown }) {

            return groups(this, (listener) => listener.groups.unsubscribeSocket(id, paths, opts));
        });

        server.decorate('server', 'groupMembers', function (this: Server, path: string) {

            return groups(this, (listener) => listener.groups.members(path));
        });

        server.decorate('server', 'userGroups', function (this: Server, user: string | number) {

            return groups(this, (listener) => listener.groups.pathsOf(user));
        });

        server.decorate('server', 'eachSocket', function (this: Server, each: (socket: Socket) => unknown, opts?: { subscription?: string; user?: string | number }) {

            return listenerOf(this).eachSocket(each, opts);
        });

        server.decorate('server', 'pulseStats', function (this: Server) {

            return listenerOf(this).stats();
        });

        server.decorate('server', 'presence', presenceApi(listener));

        server.decorate('request', 'socket', (request: Request) => request.plugins.nes?.socket ?? null, { apply: true });

        // Satisfies plugins that declare `dependencies: '@hapi/nes'` (with a version range, too); registering the
        // real @hapi/nes as well is refused by hapi, as two nes plugins would be.
        await server.register({ plugin: { name: '@hapi/nes', version: nesVersion, register: () => { } } });
    }
};
