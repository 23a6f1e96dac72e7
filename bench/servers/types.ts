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
}

// Options from the orchestrator's `listen` call. hapi-pulse reads the first three (the two-node and recovery
// scenarios): broker: 'redis' with url and prefix → a RedisBroker; history → '/rec/{id}' keeps history { size, ttl }.
// heartbeat (the many-sockets scenario): every target pings its sockets every `interval` ms and drops those that
// do not answer within `timeout` ms, each in its own way (hapi-pulse and nes: their heartbeat option; socket.io:
// pingInterval / pingTimeout; raw ws: the ws README's sweep of protocol pings).
export interface ServerOptions {
    broker?: 'memory' | 'redis';
    url?: string;
    prefix?: string;
    history?: { size: number; ttl: number };
    heartbeat?: { interval: number; timeout: number };
}

export type ServerFactory = (options?: ServerOptions) => Promise<BenchServer>;

export const ECHO_PAYLOAD = { hello: 'world' };
