// The hapi plugin: validates options once, picks the broker, and decorates server and request
// exactly as @hapi/nes does.

import { randomBytes } from 'node:crypto';
import type { IncomingMessage } from 'node:http';

import * as Hoek from '@hapi/hoek';
import type { AppCredentials, AuthArtifacts, AuthCredentials, Plugin, Request, Server, UserCredentials } from '@hapi/hapi';
import Joi from 'joi';

import type { Broker } from './broker';
import { MemoryBroker } from './brokers/memory';
import * as Auth from './server/auth';
import { Listener } from './server/listener';
import type { Settings } from './server/listener';
import type { ConnectOptions, DisconnectLog, ErrorType as ClientErrorType, PulseError, RequestOptions, RequestResponse, SubscriptionHandler } from './client';
import type { Socket, Socket as PulseSocket } from './server/socket';
import type { SubscriptionOptions, SubscriptionOptions as PulseSubscriptionOptions } from './server/subscriptions';

export type { Broker, BrokerSink, PublishEnvelope, BroadcastEnvelope, HistoryOptions, Recovery } from './broker';
export { MemoryBroker } from './brokers/memory';
export type { MemoryBrokerOptions } from './brokers/memory';
export { CloseCode } from './protocol';
import { isWellFormed } from './protocol';
export type { Socket, SocketAuth, SocketInfo } from './server/socket';
export type { SubscriptionOptions, FilterOptions, FilterResult } from './server/subscriptions';

// The client, as @hapi/nes exports it beside the plugin. Its own entry (hapi-pulse/client) loads nothing else.
export { Client, PulseError } from './client';
export type {
    ClientAuth, ClientAuthProvider, ClientOptions, ConnectOptions, DisconnectLog, ErrorType, MessageResponse, NesError,
    RequestOptions, RequestResponse, SubscriptionFlags, SubscriptionHandler
} from './client';

export interface PluginOptions {
    onConnection?: Settings['onConnection'];
    onDisconnection?: Settings['onDisconnection'];
    onMessage?: Settings['onMessage'];
    onUpgrade?: (request: IncomingMessage) => boolean | Promise<boolean>;
    auth?: false | Partial<Auth.AuthSettings>;
    headers?: string[] | '*' | null;
    tunnelHeaders?: string[];                // connection headers (host, x-forwarded-*, ...) a tunnelled request may set itself
    payload?: { maxChunkChars?: number | false };
    heartbeat?: false | { interval: number; timeout: number };
    maxConnections?: number | false;
    origin?: string | string[];
    limits?: Partial<Settings['limits']>;
    closeTimeout?: number;
    broker?: Broker;
}

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

const MiB = 1024 * 1024;
const nesVersion = '14.0.1';                            // the @hapi/nes release this plugin stands in for

const defaults = {
    auth: {
        endpoint: '/nes/auth',
        id: 'nes.auth',
        type: 'direct',
        cookie: 'nes',
        isSecure: true,
        isHttpOnly: true,
        isSameSite: 'Strict',
        path: '/',
        domain: null,
        ttl: null,
        index: false,
        timeout: 5000,
        maxConnectionsPerUser: false,
        verifyTimeout: 5000,
        expiryNotice: 10000
    },
    headers: null,
    tunnelHeaders: [],
    payload: { maxChunkChars: false },
    heartbeat: { interval: 15000, timeout: 5000 },
    maxConnections: false,
    limits: {
        maxPayload: MiB,
        maxInFlight: 100,
        maxSubscriptions: 1000,
        maxPathLength: 1024,
        maxBufferedBytes: 8 * MiB,
        rate: false
    },
    closeTimeout: 5000
};

const schema = Joi.object({
    onConnection: Joi.function(),
    onDisconnection: Joi.function(),
    onMessage: Joi.function(),
    onUpgrade: Joi.function(),
    auth: Joi.object({
        endpoint: Joi.string().required(),
        id: Joi.string(),
        type: Joi.valid('cookie', 'token', 'direct').required(),
        route: [Joi.object(), Joi.string(), Joi.valid(false)],
        cookie: Joi.string().required(),
        isSecure: Joi.boolean(),
        isHttpOnly: Joi.boolean(),
        isSameSite: Joi.valid('Strict', 'Lax', false),
        path: Joi.string().allow(null),
        domain: Joi.string().allow(null),
        ttl: Joi.number().integer().min(1).allow(null),
        iron: Joi.object(),
        password: Joi.alternatives([Joi.string(), Joi.binary(), Joi.object()]),
        index: Joi.boolean(),
        timeout: Joi.number().integer().min(1).allow(false),
        maxConnectionsPerUser: Joi.number().integer().min(1).allow(false).when('index', { is: true, otherwise: Joi.valid(false) }),
        minAuthVerifyInterval: Joi.number().integer().allow(false).when('...heartbeat', {
            is: false,
            then: Joi.number().min(1),
            otherwise: Joi.number().min(Joi.ref('...heartbeat.interval'))
        }),
        verifyTimeout: Joi.number().integer().min(1),
        expiry: Joi.function(),
        expiryNotice: Joi.number().integer().min(0)
    }).allow(false).required(),
    headers: Joi.array().items(Joi.string().lowercase()).min(1).allow('*', null),
    tunnelHeaders: Joi.array().items(Joi.string()),
    payload: Joi.object({
        maxChunkChars: Joi.number().integer().min(1).allow(false)
    }),
    heartbeat: Joi.object({
        interval: Joi.number().integer().min(1).required(),
        timeout: Joi.number().integer().min(1).less(Joi.ref('interval')).required()
    }).allow(false),
    maxConnections: Joi.number().integer().min(1).allow(false),
    origin: Joi.array().items(Joi.string()).single().min(1),
    limits: Joi.object({
        maxPayload: Joi.number().integer().min(1024),
        maxInFlight: Joi.number().integer().min(1),
        maxSubscriptions: Joi.number().integer().min(1),
        maxPathLength: Joi.number().integer().min(1),
        maxBufferedBytes: Joi.number().integer().min(1024),
        rate: Joi.object({
            messages: Joi.number().integer().min(1).required(),
            interval: Joi.number().integer().min(1).required()
        }).allow(false)
    }),
    closeTimeout: Joi.number().integer().min(1),
    broker: Joi.object({
        start: Joi.function().required(),
        stop: Joi.function().required(),
        publish: Joi.function().required(),
        broadcast: Joi.function().required(),
        subscribe: Joi.function().required(),
        unsubscribe: Joi.function().required(),
        recover: Joi.function().required()
    }).unknown()
});

const settle = (options: PluginOptions): Settings & { broker?: Broker } => {

    const { broker, ...rest } = options;
    const settings = Hoek.applyToDefaults(defaults, rest as any) as any;
    if (Array.isArray(settings.headers)) {
        settings.headers = settings.headers.map((field: string) => field.toLowerCase());
    }

    settings.tunnelHeaders = settings.tunnelHeaders.map((field: string) => field.toLowerCase());
    if (typeof settings.origin === 'string') {
        settings.origin = [settings.origin];
    }

    if (settings.auth && settings.auth.minAuthVerifyInterval === undefined) {
        settings.auth.minAuthVerifyInterval = settings.heartbeat ? settings.heartbeat.interval : defaults.heartbeat.interval;
    }

    const result = schema.validate({ ...settings, broker });
    if (result.error) {
        throw new Error(`Invalid hapi-pulse configuration: ${result.error.message}`);
    }

    if (settings.auth && settings.auth.type !== 'direct' && !settings.auth.password) {
        if (broker && !(broker instanceof MemoryBroker)) {
            throw new Error(`Invalid hapi-pulse configuration: auth.password is required for ${settings.auth.type} auth with a broker (every node must unseal what another sealed)`);
        }

        settings.auth.password = randomBytes(32).toString('base64url');         // sealed only for this process
    }

    return broker ? { ...settings, broker } : settings;
};

// Registry sizes of this server's node (read-only): open sockets, indexed users, subscribed paths, socket-path
// subscriptions and upgrades still waiting on onUpgrade. For dashboards, and for tests that prove nothing leaks.
export interface PulseStats {
    sockets: number;
    users: number;
    topics: number;
    subscriptions: number;
    pendingUpgrades: number;
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
        publish(path: string, message: unknown, options?: { internal?: unknown; user?: string | number }): Promise<void>;
        eachSocket(each: (socket: Socket) => unknown, options?: { subscription?: string; user?: string | number }): Promise<void>;
        pulseStats(): PulseStats;
    }

    interface Request {
        socket: Socket | null;
    }

    interface PluginsStates {
        nes?: { socket: Socket };
    }
}

export const plugin: Plugin<PluginOptions> = {
    name: 'hapi-pulse',
    version: '0.1.0',
    requirements: { hapi: '>=21.0.0' },
    async register(server: Server, options: PluginOptions) {

        const settings = settle(options);                 // hapi passes {} when registered without options
        if (settings.auth) {
            Auth.registerEndpoint(server, settings.auth);
        }

        const listener = new Listener(server, settings, settings.broker ?? new MemoryBroker());
        listeners.set(server.listener, listener);

        server.ext('onPreStart', () => listener.start());
        server.ext('onPreStop', () => listener.stop());

        server.decorate('server', 'broadcast', function (this: Server, message: unknown, opts?: { user?: string | number }) {

            return listenerOf(this).broadcast(message, opts);
        });

        server.decorate('server', 'subscription', function (this: Server, path: string, opts?: SubscriptionOptions) {

            listenerOf(this).subscriptions.add(path, opts);
        });

        server.decorate('server', 'publish', function (this: Server, path: string, message: unknown, opts?: { internal?: unknown; user?: string | number }) {

            Hoek.assert(typeof path === 'string' && path[0] === '/', 'Missing or invalid subscription path:', path || 'empty');
            Hoek.assert(isWellFormed(path), 'Subscription path must be well-formed Unicode:', path);
            return listenerOf(this).publish(path, message, opts);
        });

        server.decorate('server', 'eachSocket', function (this: Server, each: (socket: Socket) => unknown, opts?: { subscription?: string; user?: string | number }) {

            return listenerOf(this).eachSocket(each, opts);
        });

        server.decorate('server', 'pulseStats', function (this: Server) {

            return listenerOf(this).stats();
        });

        server.decorate('request', 'socket', (request: Request) => request.plugins.nes?.socket ?? null, { apply: true });

        // Satisfies plugins that declare `dependencies: '@hapi/nes'` (with a version range, too); registering the
        // real @hapi/nes as well is refused by hapi, as two nes plugins would be.
        await server.register({ plugin: { name: '@hapi/nes', version: nesVersion, register: () => { } } });
    }
};
