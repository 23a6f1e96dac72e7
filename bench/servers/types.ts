// What every benchmarked server implementation provides to server-main.ts.
//
// Every implementation exposes the same surface:
//   - subscriptions on '/fan' (one shared path) and '/item/{id}' (one path per socket)
//   - a request endpoint 'GET /echo' answering {"hello":"world"}
//   - publish(path, message): deliver `message` to every subscriber of `path`

export interface BenchServer {
    listen(): Promise<number>;                          // Resolves with the port bound on 127.0.0.1
    publish(path: string, message: object): void;
    connections(): number;                              // Open client connections, as the server sees them
    stop(): Promise<void>;
    publishErrors?(): number;                           // Rejected publishes (brokers that can refuse, e.g. Redis)
    publishOnce?(paths: string[], message: object): void;   // hapi-pulse only: one publish to several paths, once per socket
    // hapi-pulse with ServerOptions.presence only: server.presence.count(path), and members written straight into
    // the broker's presence store (users m<first> … m<first + count - 1>, one socket each, as this node's).
    presenceCount?(path: string): Promise<{ users: number; sockets: number }>;
    presenceFill?(path: string, first: number, count: number): Promise<void>;
}

// Options from the orchestrator's `listen` call. hapi-pulse reads the first four and `presence` (the two-node,
// recovery and presence scenarios): broker: 'redis' with url and prefix → a RedisBroker; history → '/rec/{id}' keeps history { size, ttl }.
// heartbeat (the many-sockets scenario): every target pings its sockets every `interval` ms and drops those that
// do not answer within `timeout` ms, each in its own way (hapi-pulse and nes: their heartbeat option; socket.io:
// pingInterval / pingTimeout; raw ws: the ws README's sweep of protocol pings).
export interface ServerOptions {
    broker?: 'memory' | 'redis';
    url?: string;
    prefix?: string;
    history?: { size: number; ttl: number };
    heartbeat?: { interval: number; timeout: number };
    presence?: PresenceServerOptions;
}

// The presence scenarios (hapi-pulse only): sockets authenticate in their hello (direct auth, mode optional: the
// user is `auth.headers['x-user']`) and '/room/{id}' is declared with presence (`on`, batch interval `interval` ms,
// info { alias: user }) or without it (`on: false`: the same server otherwise, the reference for its cost).
export interface PresenceServerOptions {
    on: boolean;
    interval: number;
}

export type ServerFactory = (options?: ServerOptions) => Promise<BenchServer>;

export const ECHO_PAYLOAD = { hello: 'world' };
