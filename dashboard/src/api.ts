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
  onStatus: (s: Status, reconnected: boolean) => void,
): Client {
  let connections = 0;
  return createClient({
    url: wsUrl(endpoint),
    connectionParams: { authorization: `Bearer ${token}` },
    lazy: true,
    keepAlive: 10_000,
    retryAttempts: Infinity,
    shouldRetry: () => true,
    on: {
      connecting: () => onStatus('connecting', false),
      connected: () => {
        connections += 1;
        onStatus('live', connections > 1);
      },
      closed: () => onStatus('offline', false),
    },
  });
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
        // A refused subscription arrives as the list of its errors; a closed socket retries.
        if (Array.isArray(e)) error(e as GraphQLError[]);
      },
      complete: () => {},
    },
  );
}
