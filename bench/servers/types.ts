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
}

export type ServerFactory = () => Promise<BenchServer>;

export const ECHO_PAYLOAD = { hello: 'world' };
