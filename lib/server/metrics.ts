// What the channel is doing: the listener, its sockets and its broker report events here, and this module
// hands them to OpenTelemetry (when the application registered an SDK) and to the inspector page.
//
// Counts that move on every frame (messages and bytes in and out) are plain numbers that a metric reader
// reads when it collects: the send path pays an increment, never an instrument call. Everything else is
// recorded per event (a connection, a publish, a tunnelled request), never per recipient. Attributes are
// bounded by construction: message types, limit names, close codes and subscription route patterns, never a
// concrete path or a user.
//
// @opentelemetry/api is an optional peer dependency, loaded when a server starts; its types are not used
// here so that the declarations of this package never name it.

import { join } from 'node:path';

import type { ServerMessage } from '../protocol';
import type { Prepared } from './prepared';

// ---- The slice of the OpenTelemetry metrics API used here ----

export type MetricAttributes = Record<string, string | number>;

interface Counter { add(value: number, attributes?: MetricAttributes): void }
interface Histogram { record(value: number, attributes?: MetricAttributes): void }
interface Observable { }
interface BatchResult { observe(observable: Observable, value: number, attributes?: MetricAttributes): void }
type BatchCallback = (result: BatchResult) => void;

interface InstrumentOptions {
    description: string;
    unit: string;
    advice?: { explicitBucketBoundaries: number[] };
}

interface Meter {
    createCounter(name: string, options: InstrumentOptions): Counter;
    createHistogram(name: string, options: InstrumentOptions): Histogram;
    createObservableCounter(name: string, options: InstrumentOptions): Observable;
    createObservableUpDownCounter(name: string, options: InstrumentOptions): Observable;
    addBatchObservableCallback(callback: BatchCallback, observables: Observable[]): void;
    removeBatchObservableCallback(callback: BatchCallback, observables: Observable[]): void;
}

// What `metrics.meterProvider` accepts: any OpenTelemetry MeterProvider.
export interface MeterProviderLike {
    getMeter(name: string, version?: string): unknown;
}

interface MetricsApi {
    metrics: { getMeterProvider(): MeterProviderLike };
    createNoopMeter(): unknown;
}

// dist/lib/server/metrics.js -> the package's package.json (read once a server starts exporting).
const packageVersion = (): string => require(join(__dirname, '..', '..', '..', 'package.json')).version;

// null when @opentelemetry/api cannot be loaded (not installed): metrics are then off.
export const loadApi = (): MetricsApi | null => {

    try {
        return require('@opentelemetry/api') as MetricsApi;
    }
    catch {
        return null;
    }
};

// The meter to record with, or null when nobody would read it (no SDK registered, no API installed).
export const meterOf = (option: boolean | { meterProvider: MeterProviderLike }): Meter | null => {

    if (option === false) {
        return null;
    }

    const api = loadApi();
    if (!api) {
        return null;
    }

    const provider = option === true ? api.metrics.getMeterProvider() : option.meterProvider;
    const meter = provider.getMeter('hapi-pulse', packageVersion());
    return meter === api.createNoopMeter() ? null : meter as Meter;
};

// ---- Bounded attribute values ----

export const receivedTypes = ['hello', 'reauth', 'request', 'message', 'sub', 'unsub', 'ping', 'invalid', 'binary'] as const;
export type ReceivedType = typeof receivedTypes[number];

export const sentTypes = ['hello', 'reauth', 'request', 'message', 'sub', 'unsub', 'pub', 'update', 'ping', 'revoke', 'expiring', 'join', 'error'] as const;
export type SentType = typeof sentTypes[number];

// Every type the server sends is listed (checked by the compiler): sentTypeOf() never meets another.
const everyTypeListed: [Exclude<NonNullable<ServerMessage['type']>, SentType>] extends [never] ? true : never = true;
void everyTypeListed;

const sentIndex = new Map<string, number>(sentTypes.map((type, index) => [type, index]));
const pubIndex = sentIndex.get('pub')!;
const updateIndex = sentIndex.get('update')!;
const pingIndex = sentIndex.get('ping')!;
const receivedIndex = new Map<string, number>(receivedTypes.map((type, index) => [type, index]));

export const limitNames = ['maxConnections', 'maxConnectionsPerUser', 'maxInFlight', 'maxSubscriptions', 'maxPayload', 'maxBufferedBytes', 'rate'] as const;
export type LimitName = typeof limitNames[number];

export const upgradeRejections = ['stopped', 'origin', 'maxConnections', 'refused', 'failed'] as const;
export type UpgradeRejection = typeof upgradeRejections[number];

// RFC 6455 codes and ours; any other code a client closes with is recorded as 0.
const knownCloseCodes = new Set([1000, 1001, 1002, 1003, 1005, 1006, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 1015, 4000, 4001, 4002, 4003, 4004, 4005]);
export const boundedCloseCode = (code: number): number => (knownCloseCodes.has(code) ? code : 0);

// The type of a message the server sends as text: every message is a JSON object whose first key is its type,
// except the errors of messages that had none (`{"statusCode":...`).
const typePrefix = '{"type":"';
export const sentTypeOf = (text: string): number => {

    if (!text.startsWith(typePrefix)) {
        return sentIndex.get('error')!;
    }

    const end = text.indexOf('"', typePrefix.length);
    return sentIndex.get(text.slice(typePrefix.length, end))!;                  // every type the server sends is listed
};

// Payload bytes of a whole server frame (unmasked: the second byte is the length or its marker).
export const framePayloadBytes = (frame: Buffer): number => frame.length - (frame[1] === 126 ? 4 : frame[1] === 127 ? 10 : 2);

// ---- What the metrics observe ----

// The node state read when a reader collects: the host (the listener) provides it.
export interface MetricsSource {
    connections(): number;
    subscriptionsByRoute(): Map<string, number>;
    presenceByRoute(): Map<string, number>;            // this node's members of presence paths (see Presence.localMembers)
}

export interface Disconnect {
    socket: string;
    user: string | null;
    code: number;
    reason: string;
    at: number;                    // ms since the epoch
    duration: number;              // ms connected
}

const latency = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
const connectionSeconds = [1, 5, 15, 30, 60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400];
const fanout = [0, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000];

type Instruments = ReturnType<Metrics['createInstruments']>;

export class Metrics {

    // Per type (see sentTypes / receivedTypes): counted on every frame, read when a reader collects.
    readonly sentMessages = new Array<number>(sentTypes.length).fill(0);
    readonly sentBytes = new Array<number>(sentTypes.length).fill(0);
    readonly receivedMessages = new Array<number>(receivedTypes.length).fill(0);
    readonly receivedBytes = new Array<number>(receivedTypes.length).fill(0);

    readonly limitHits = Object.fromEntries(limitNames.map((name) => [name, 0])) as Record<LimitName, number>;
    readonly upgradesRejected = Object.fromEntries(upgradeRejections.map((name) => [name, 0])) as Record<UpgradeRejection, number>;
    readonly disconnects: Disconnect[] = [];                // newest last, at most recentDisconnects

    private readonly routeAttributes = new Map<string, MetricAttributes>();      // every route seen: bounded by the routes
    private readonly presenceRoutes = new Set<string>();                         // every route with presence members seen
    private readonly publishes = new Map<string, number>();                      // per route, read when a reader collects
    private instruments: Instruments | null = null;
    private meter: Meter | null = null;
    private live = false;                                   // between export() and close()
    private readonly collect: BatchCallback = (result) => this.observe(result);

    // `recentDisconnects`: how many the inspector keeps (0: none).
    constructor(private readonly source: MetricsSource, private readonly recentDisconnects: number) { }

    // Whether an OpenTelemetry SDK receives what is recorded.
    get exporting(): boolean {

        return this.instruments !== null;
    }

    // At server start: what is recorded goes to this meter too (a restart with the same meter goes on with it).
    export(meter: Meter): void {

        if (meter !== this.meter) {
            this.meter?.removeBatchObservableCallback(this.collect, Object.values(this.instruments!.observables));
            this.meter = meter;
            this.instruments = this.createInstruments(meter);
            meter.addBatchObservableCallback(this.collect, Object.values(this.instruments.observables));
        }

        this.live = true;
    }

    // The server stopped: from now on it reports no connections and no subscriptions. (A reader with cumulative
    // temporality repeats the last value of a series nobody observes any more, so zero is reported instead.)
    close(): void {

        this.live = false;
    }

    private createInstruments(meter: Meter) {

        return {
            connectionDuration: meter.createHistogram('pulse.server.connection.duration', { description: 'How long WebSocket connections lasted, by close code', unit: 's', advice: { explicitBucketBoundaries: connectionSeconds } }),
            slowConsumers: meter.createCounter('pulse.server.slow_consumer.disconnects', { description: 'Sockets closed for falling more than limits.maxBufferedBytes behind', unit: '{connection}' }),
            limitHits: meter.createCounter('pulse.server.limit.hits', { description: 'Times a limit refused a connection, message or subscription', unit: '{hit}' }),
            rejectedUpgrades: meter.createCounter('pulse.server.rejected_upgrades', { description: 'WebSocket upgrades refused, by reason', unit: '{upgrade}' }),
            requestDuration: meter.createHistogram('pulse.server.request.duration', { description: 'Duration of requests tunnelled over WebSocket', unit: 's', advice: { explicitBucketBoundaries: latency } }),
            recipients: meter.createHistogram('pulse.server.delivery.recipients', { description: 'Local sockets a delivered publish went to (fan-out size)', unit: '{socket}', advice: { explicitBucketBoundaries: fanout } }),
            brokerPublish: meter.createHistogram('pulse.broker.publish.duration', { description: 'Time the broker took to accept a publish', unit: 's', advice: { explicitBucketBoundaries: latency } }),
            deliveryLag: meter.createHistogram('pulse.broker.delivery.lag', { description: 'Time from server.publish() on any node to the delivery on this node', unit: 's', advice: { explicitBucketBoundaries: latency } }),
            recoveries: meter.createCounter('pulse.server.recoveries', { description: 'Resumed subscriptions, by outcome', unit: '{recovery}' }),
            observables: {
                connections: meter.createObservableUpDownCounter('pulse.server.active_connections', { description: 'Open WebSocket connections', unit: '{connection}' }),
                subscriptions: meter.createObservableUpDownCounter('pulse.server.active_subscriptions', { description: 'Socket subscriptions, by subscription route', unit: '{subscription}' }),
                receivedMessages: meter.createObservableCounter('pulse.server.received.messages', { description: 'Messages received from clients, by type', unit: '{message}' }),
                receivedBytes: meter.createObservableCounter('pulse.server.received.bytes', { description: 'Payload bytes received from clients, by message type', unit: 'By' }),
                sentMessages: meter.createObservableCounter('pulse.server.sent.messages', { description: 'Messages sent to clients, by type', unit: '{message}' }),
                sentBytes: meter.createObservableCounter('pulse.server.sent.bytes', { description: 'Payload bytes sent to clients, by message type', unit: 'By' }),
                publishes: meter.createObservableCounter('pulse.server.publishes', { description: 'Publishes made on this node and accepted by the broker', unit: '{publish}' }),
                presence: meter.createObservableUpDownCounter('pulse.presence.members', { description: 'Members of presence paths through this node (authenticated users with a socket here), by subscription route', unit: '{member}' })
            }
        };
    }

    private observe(result: BatchResult): void {

        const { observables } = this.instruments!;
        result.observe(observables.connections, this.live ? this.source.connections() : 0);
        const subscriptions = this.live ? this.source.subscriptionsByRoute() : new Map<string, number>();
        for (const route of subscriptions.keys()) {
            this.route(route);
        }

        for (const [route, attributes] of this.routeAttributes) {
            result.observe(observables.subscriptions, subscriptions.get(route) ?? 0, attributes);           // 0: none left
        }

        const members = this.live ? this.source.presenceByRoute() : new Map<string, number>();
        for (const route of members.keys()) {
            this.presenceRoutes.add(route);
        }

        for (const route of this.presenceRoutes) {
            result.observe(observables.presence, members.get(route) ?? 0, this.route(route));               // 0: none left
        }

        for (const [route, count] of this.publishes) {
            result.observe(observables.publishes, count, this.route(route));
        }

        for (let i = 0; i < receivedTypes.length; ++i) {
            const attributes = { 'pulse.message.type': receivedTypes[i]! };
            result.observe(observables.receivedMessages, this.receivedMessages[i]!, attributes);
            result.observe(observables.receivedBytes, this.receivedBytes[i]!, attributes);
        }

        for (let i = 0; i < sentTypes.length; ++i) {
            const attributes = { 'pulse.message.type': sentTypes[i]! };
            result.observe(observables.sentMessages, this.sentMessages[i]!, attributes);
            result.observe(observables.sentBytes, this.sentBytes[i]!, attributes);
        }
    }

    private route(pattern: string): MetricAttributes {

        let attributes = this.routeAttributes.get(pattern);
        if (!attributes) {
            attributes = { 'pulse.route': pattern };
            this.routeAttributes.set(pattern, attributes);
        }

        return attributes;
    }

    // ---- Events ----

    received(type: ReceivedType, bytes: number): void {

        const index = receivedIndex.get(type)!;
        ++this.receivedMessages[index]!;
        this.receivedBytes[index]! += bytes;
    }

    // A message sent as text (replies, errors, application sends): its type is read from the text.
    sentText(text: string): void {

        const index = sentTypeOf(text);
        ++this.sentMessages[index]!;
        this.sentBytes[index]! += Buffer.byteLength(text);
    }

    // A prepared frame written to one socket: a pub (it has a path), an update or a ping, told apart by the
    // text's first letters ({"type":"update / {"type":"ping).
    sentFrame(prepared: Prepared, frame: Buffer): void {

        const index = prepared.path !== null ? pubIndex : prepared.text.charCodeAt(typePrefix.length) === 0x75 ? updateIndex : pingIndex;
        ++this.sentMessages[index]!;
        this.sentBytes[index]! += framePayloadBytes(frame);
    }

    limitHit(limit: LimitName): void {

        ++this.limitHits[limit];
        this.instruments?.limitHits.add(1, { 'pulse.limit': limit });
        if (limit === 'maxBufferedBytes') {
            this.instruments?.slowConsumers.add(1);
        }
    }

    upgradeRejected(reason: UpgradeRejection): void {

        ++this.upgradesRejected[reason];
        this.instruments?.rejectedUpgrades.add(1, { 'pulse.reason': reason });
    }

    disconnected(disconnect: Disconnect): void {

        this.instruments?.connectionDuration.record(disconnect.duration / 1000, { 'pulse.close.code': boundedCloseCode(disconnect.code) });
        if (this.recentDisconnects) {
            if (this.disconnects.push(disconnect) > this.recentDisconnects) {
                this.disconnects.shift();
            }
        }
    }

    // A tunnelled request answered by hapi: the method and path pattern of the route that answered it (hapi's
    // not-found route when none did, with method '_special'; '*' for a route of any method).
    requested(method: string, route: string, statusCode: number, ms: number): void {

        const known = method === '*' || method === '_special' ? '_OTHER' : method.toUpperCase();
        this.instruments?.requestDuration.record(ms / 1000, { 'http.request.method': known, 'http.route': route, 'http.response.status_code': statusCode });
    }

    // A publish this node made, once the broker accepted it (only while exporting).
    published(route: string, ms: number): void {

        this.publishes.set(route, (this.publishes.get(route) ?? 0) + 1);
        this.instruments!.brokerPublish.record(ms / 1000, this.route(route));
    }

    // A publish the broker delivered to this node (only while exporting): `at` is when server.publish() was called,
    // on a node that exports metrics.
    delivered(route: string, recipients: number, at: number | undefined): void {

        const attributes = this.route(route);
        this.instruments!.recipients.record(recipients, attributes);
        if (at !== undefined) {
            this.instruments!.deliveryLag.record(Math.max(0, Date.now() - at) / 1000, attributes);
        }
    }

    recovered(route: string, replayed: boolean): void {

        this.instruments?.recoveries.add(1, { 'pulse.route': route, 'pulse.recovery.outcome': replayed ? 'replayed' : 'not_recoverable' });
    }
}
