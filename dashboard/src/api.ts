// The two ways the dashboard and the widget talk to Tollgate: queries over HTTP (POST /graphql) and
// live results over graphql-transport-ws (the token in connection_init, as the server expects).
import { createClient, type Client } from 'graphql-ws';

export interface GraphQLError {
  message: string;
  path?: (string | number)[];
  extensions?: { code?: string };
}

export interface Result<T> {
  data: T | null;
  errors: GraphQLError[];
}

/** One HTTP request; network failures come back as an error with code NETWORK. */
export async function query<T, V extends object>(
  endpoint: string,
  token: string,
  document: string,
  variables: V,
): Promise<Result<T>> {
  try {
    const resp = await fetch(endpoint, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        accept: 'application/graphql-response+json, application/json',
        authorization: `Bearer ${token}`,
      },
      body: JSON.stringify({ query: document, variables }),
    });
    const body = (await resp.json()) as { data?: T | null; errors?: GraphQLError[] };
    return { data: body.data ?? null, errors: body.errors ?? [] };
  } catch (e) {
    return { data: null, errors: [{ message: String(e), extensions: { code: 'NETWORK' } }] };
  }
}

/** The first error whose path starts with `field`, if any. */
export function errorAt(errors: GraphQLError[], ...field: string[]): GraphQLError | undefined {
  return errors.find((e) => field.every((f, i) => e.path?.[i] === f));
}

/** `ws://host/graphql` for an `http://host/graphql` endpoint (relative ones resolve on this page). */
export function wsUrl(endpoint: string): string {
  const u = new URL(endpoint, location.href);
  u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
  return u.toString();
}

export type Status = 'connecting' | 'live' | 'offline';

/**
 * A graphql-ws client that reconnects forever. `onStatus` hears whether it is live; a reconnect
 * (connected a second time) is when a view reloads what it may have missed.
 */
export function live(
  endpoint: string,
  token: string,
  onStatus: (s: Status, reconnected: boolean, refused?: boolean) => void,
): Client {
  let connections = 0;
  return createClient({
    url: wsUrl(endpoint),
    connectionParams: { authorization: `Bearer ${token}` },
    lazy: true,
    keepAlive: 10_000,
    retryAttempts: Infinity,
    // The server refusing the connection is final: retrying with the same token cannot help, so
    // the subscriptions hear it instead.
    shouldRetry: (e) => !isRefusal(e),
    on: {
      connecting: () => onStatus('connecting', false),
      connected: () => {
        connections += 1;
        onStatus('live', connections > 1);
      },
      // `refused`: the server closed it on purpose, not the network.
      closed: (e) => onStatus('offline', false, isRefusal(e)),
    },
  });
}

/** A WebSocket close, as graphql-ws hands it over. */
export function isCloseEvent(e: unknown): e is { code: number; reason: string } {
  return typeof e === 'object' && e !== null && 'code' in e && typeof (e as { code: unknown }).code === 'number';
}

/** A close that retrying cannot change: a bad request (4400), no or a refused token (4401, 4403),
 * an unacceptable subprotocol (4406). A timeout (4408) or a dropped socket is retried. */
export function isRefusal(e: unknown): boolean {
  return isCloseEvent(e) && [4400, 4401, 4403, 4406].includes(e.code);
}

/** Subscribes; answers the function that stops it. */
export function subscribe<T, V extends object>(
  client: Client,
  document: string,
  variables: V,
  next: (data: T) => void,
  error: (errors: GraphQLError[]) => void,
): () => void {
  return client.subscribe<T>(
    { query: document, variables: variables as Record<string, unknown> },
    {
      next: (r) => {
        if (r.data) next(r.data as T);
        if (r.errors?.length) error(r.errors as unknown as GraphQLError[]);
      },
      error: (e) => {
        // A refused subscription arrives as the list of its errors; a refused connection as the
        // socket's close (its reason says why); a socket that merely dropped retries.
        if (Array.isArray(e)) error(e as GraphQLError[]);
        else if (isCloseEvent(e))
          error([{ message: e.reason || `the server closed the connection (${e.code})` } as GraphQLError]);
      },
      complete: () => {},
    },
  );
}
