// The plugin's options: their types, their defaults and the Joi schema that checks them. The value Joi returns
// (defaults filled in, conversions done) is the one the server runs with.

import { randomBytes } from 'node:crypto';
import type { IncomingMessage } from 'node:http';

import type * as Iron from '@hapi/iron';
import type { RouteOptions } from '@hapi/hapi';
import Joi from 'joi';

import type { Broker } from './broker';
import type { CompressionSettings } from './server/compression';
import type { InspectorSettings } from './server/inspector';
import type { MeterProviderLike } from './server/metrics';
import type { Socket } from './server/socket';

export interface AuthSettings {
    type: 'direct' | 'cookie' | 'token';
    endpoint: string;
    id: string;
    route?: RouteOptions['auth'];
    password: string;                    // iron password (string, buffer or { id, secret })
    iron?: Iron.SealOptions;
    cookie: string;
    isSecure: boolean;
    isHttpOnly: boolean;
    isSameSite: 'Strict' | 'Lax' | false;
    path: string | null;
    domain: string | null;
    ttl: number | null;
    index: boolean;
    timeout: number | false;
    maxConnectionsPerUser: number | false;
    minAuthVerifyInterval: number | false;
    verifyTimeout: number;               // ms a credential check may take; one that takes longer failed
    expiry?: (credentials: Record<string, any>) => number | null | undefined;
    expiryNotice: number;                // ms before expiry that extension clients are warned
}

export interface Limits {
    maxPayload: number;
    maxInFlight: number;
    maxSubscriptions: number;
    maxPathLength: number;
    maxBufferedBytes: number;
    rate: false | { messages: number; interval: number };
}

// What the server runs with: every option settled.
export interface Settings {
    onConnection?: (socket: Socket) => void | Promise<void>;
    onDisconnection?: (socket: Socket) => void | Promise<void>;
    onMessage?: (socket: Socket, message: any) => unknown;
    onUpgrade?: (request: IncomingMessage) => boolean | Promise<boolean>;
    auth: AuthSettings | false;
    headers: string[] | '*' | null;          // lower case
    tunnelHeaders: string[];                  // lower case
    payload: { maxChunkChars: number | false };
    heartbeat: false | { interval: number; timeout: number };
    maxConnections: number | false;
    origin?: string[];
    limits: Limits;
    closeTimeout: number;
    compression: false | CompressionSettings;
    broker: Broker;
    metrics: boolean | { meterProvider: MeterProviderLike };
    inspector: InspectorSettings | false;
}

// The inspector page (see README): `auth` must be given; `false` serves it to anyone and is for development only.
export interface InspectorOptions {
    path: string;
    auth: InspectorSettings['auth'];
    recentDisconnects?: number;
    maxListed?: number;
}

// What the application passes to server.register().
export interface PluginOptions {
    onConnection?: Settings['onConnection'];
    onDisconnection?: Settings['onDisconnection'];
    onMessage?: Settings['onMessage'];
    onUpgrade?: Settings['onUpgrade'];
    auth?: false | Partial<AuthSettings>;
    headers?: string[] | '*' | null;
    tunnelHeaders?: string[];                // connection headers (host, x-forwarded-*, ...) a tunnelled request may set itself
    payload?: { maxChunkChars?: number | false };
    heartbeat?: false | { interval: number; timeout: number };
    maxConnections?: number | false;
    origin?: string | string[];
    limits?: Partial<Limits>;
    closeTimeout?: number;
    compression?: boolean | Partial<CompressionSettings>;
    broker?: Broker;
    metrics?: boolean | { meterProvider: MeterProviderLike };
    inspector?: false | InspectorOptions;
}

const MiB = 1024 * 1024;
const defaultHeartbeat = { interval: 15000, timeout: 5000 };

const auth = Joi.object({
    endpoint: Joi.string().default('/nes/auth'),
    id: Joi.string().default('nes.auth'),
    type: Joi.valid('cookie', 'token', 'direct').default('direct'),
    route: [Joi.object(), Joi.string(), Joi.valid(false)],
    cookie: Joi.string().default('nes'),
    isSecure: Joi.boolean().default(true),
    isHttpOnly: Joi.boolean().default(true),
    isSameSite: Joi.valid('Strict', 'Lax', false).default('Strict'),
    path: Joi.string().allow(null).default('/'),
    domain: Joi.string().allow(null).default(null),
    ttl: Joi.number().integer().min(1).allow(null).default(null),
    iron: Joi.object(),
    password: Joi.alternatives([Joi.string(), Joi.binary(), Joi.object()]),
    index: Joi.boolean().default(false),
    timeout: Joi.number().integer().min(1).allow(false).default(5000),
    maxConnectionsPerUser: Joi.number().integer().min(1).allow(false).default(false).when('index', { is: true, otherwise: Joi.valid(false) }),

    // Defaults to the heartbeat interval: credentials are re-checked as often as the socket is
    minAuthVerifyInterval: Joi.number().integer().allow(false).when('...heartbeat', {
        is: false,
        then: Joi.number().min(1).default(defaultHeartbeat.interval),
        otherwise: Joi.number().min(Joi.ref('...heartbeat.interval')).default(Joi.ref('...heartbeat.interval'))
    }),
    verifyTimeout: Joi.number().integer().min(1).default(5000),
    expiry: Joi.function(),
    expiryNotice: Joi.number().integer().min(0).default(10000)
});

const compression = Joi.object({
    threshold: Joi.number().integer().min(0).default(1024),
    level: Joi.number().integer().min(1).max(9).default(6)
});

const schema = Joi.object({
    onConnection: Joi.function(),
    onDisconnection: Joi.function(),
    onMessage: Joi.function(),
    onUpgrade: Joi.function(),
    auth: auth.allow(false).default(),
    headers: Joi.array().items(Joi.string().lowercase()).min(1).allow('*', null).default(null),
    tunnelHeaders: Joi.array().items(Joi.string().lowercase()).default([]),
    payload: Joi.object({
        maxChunkChars: Joi.number().integer().min(1).allow(false).default(false)
    }).default(),
    heartbeat: Joi.object({
        interval: Joi.number().integer().min(1).default(defaultHeartbeat.interval),
        timeout: Joi.number().integer().min(1).less(Joi.ref('interval')).default(defaultHeartbeat.timeout)
    }).allow(false).default(),
    maxConnections: Joi.number().integer().min(1).allow(false).default(false),
    origin: Joi.array().items(Joi.string()).single().min(1),
    limits: Joi.object({
        maxPayload: Joi.number().integer().min(1024).default(MiB),
        maxInFlight: Joi.number().integer().min(1).default(100),
        maxSubscriptions: Joi.number().integer().min(1).default(1000),
        maxPathLength: Joi.number().integer().min(1).default(1024),
        maxBufferedBytes: Joi.number().integer().min(1024).default(8 * MiB),
        rate: Joi.object({
            messages: Joi.number().integer().min(1).required(),
            interval: Joi.number().integer().min(1).required()
        }).allow(false).default(false)
    }).default(),
    closeTimeout: Joi.number().integer().min(1).default(5000),
    metrics: Joi.alternatives([
        Joi.boolean(),
        Joi.object({
            meterProvider: Joi.object({ getMeter: Joi.function().required() }).unknown().required().custom((_copy, helpers) => helpers.original)
        })
    ]).default(true),
    inspector: Joi.object({
        path: Joi.string().pattern(/^(\/[A-Za-z0-9._~-]+)+$/).required(),
        auth: Joi.alternatives([Joi.valid(false), Joi.string(), Joi.object()]).required()
            .messages({ 'any.required': '{{#label}} is required: an auth strategy (or route auth config) the inspector demands, or false to serve it to anyone (never in production)' }),
        recentDisconnects: Joi.number().integer().min(0).default(50),
        maxListed: Joi.number().integer().min(1).default(500)
    }).allow(false).default(false),

    // true: every field at its default
    compression: Joi.alternatives([
        Joi.valid(false),
        Joi.boolean().custom((on: boolean) => (on ? compression.validate({}).value : false)),
        compression
    ]).default(false),

    broker: Joi.object({
        start: Joi.function().required(),
        stop: Joi.function().required(),
        publish: Joi.function().required(),
        broadcast: Joi.function().required(),
        subscribe: Joi.function().required(),
        unsubscribe: Joi.function().required(),
        recover: Joi.function().required()
    }).unknown().custom((_copy, helpers) => helpers.original)          // the broker itself runs, not a copy
});

// Checks the options once, at registration, and returns what the server runs with. `Local` is the in-process
// broker class (given by the entry point: nothing under server/ may reach brokers/ through this module): the
// default broker, and the one with which a password made up for this process is enough.
export const settle = (options: PluginOptions, Local: new () => Broker): Settings => {

    const result = schema.validate(options);
    if (result.error) {
        throw new Error(`Invalid hapi-pulse configuration: ${result.error.message}`);
    }

    const settings: Settings = result.value;
    settings.broker ??= new Local();
    if (settings.auth && settings.auth.type !== 'direct' && !settings.auth.password) {
        if (!(settings.broker instanceof Local)) {
            throw new Error(`Invalid hapi-pulse configuration: auth.password is required for ${settings.auth.type} auth with a broker (every node must unseal what another sealed)`);
        }

        settings.auth.password = randomBytes(32).toString('base64url');         // sealed only for this process
    }

    return settings;
};
