// @hapi/call ships no type declarations; this is the part of its API hapi-pulse uses.
declare module '@hapi/call' {

    export interface Match<T> {
        route: T;
        params: Record<string, string>;
        paramsArray: string[];
        isBoom?: undefined;
    }

    export class Router<T = unknown> {
        constructor(options?: { isCaseSensitive?: boolean });
        add(config: { method: string; path: string; id?: string }, route: T): unknown;
        route(method: string, path: string): Match<T> | (Error & { isBoom: true });
    }
}
