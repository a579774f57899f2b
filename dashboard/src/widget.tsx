// <tollgate-usage>: one organization's live usage bars, for any page.
//
//   <script src="https://usage.example.com/dashboard/tollgate-usage.js"></script>
//   <tollgate-usage token="..." metrics="bookings,venues"></tollgate-usage>
//
// Attributes: `token` (required; a VIEWER token of the organization is enough), `endpoint` (the
// GraphQL URL; default: /graphql on the server this script came from), `metrics` (codes,
// comma-separated, in the order to show; default: all), `organization` (an organization id, for
// platform-team tokens), `near-pct` (the near-limit threshold, default 80). It reads and follows
// usage over one WebSocket (graphql-transport-ws), so the host page needs no CORS; it renders in a
// shadow root, themed by the --tollgate-* custom properties. Events: `tollgate-usage` (detail: the
// summary) after each update, `tollgate-error` (detail: the message).
import { render } from 'preact';
import type { Client } from 'graphql-ws';
import {
  UsageUpdatedDocument,
  WidgetUsageDocument,
  type SummaryFragment,
  type UsageUpdatedSubscription,
  type UsageUpdatedSubscriptionVariables,
  type WidgetUsageQuery,
  type WidgetUsageQueryVariables,
} from './generated/graphql';
import { live, subscribe, type GraphQLError } from './api';
import { NEAR_LIMIT_PCT } from './format';
import { UsageBars } from './bars';
import barsCss from './bars.css';

const scriptSrc = (document.currentScript as HTMLScriptElement | null)?.src;
const DEFAULT_ENDPOINT = scriptSrc ? new URL('/graphql', scriptSrc).toString() : '/graphql';

const HOST_CSS = `
:host { display: block; font: inherit; color: inherit; font-variant-numeric: tabular-nums; }
:host([hidden]) { display: none; }
.title { font-weight: 600; margin: 0 0 0.5rem; min-height: 1.4em; }
.error { color: var(--tollgate-exceeded, #c53030); margin: 0; }
.empty { color: var(--tollgate-muted, #4a5568); margin: 0; }
`;

class TollgateUsage extends HTMLElement {
  static observedAttributes = ['endpoint', 'token', 'metrics', 'organization', 'near-pct'];

  private readonly mount: HTMLDivElement;
  private client: Client | null = null;
  private stops: (() => void)[] = [];
  private summary: SummaryFragment | null = null;
  private name = '';
  private error: string | null = null;
  private scheduled = false;
  /** The unknown metric codes last reported (each set once). */
  private reportedUnknown = '';

  constructor() {
    super();
    const root = this.attachShadow({ mode: 'open' });
    const style = document.createElement('style');
    style.textContent = HOST_CSS + barsCss;
    this.mount = document.createElement('div');
    this.mount.setAttribute('part', 'container');
    root.append(style, this.mount);
  }

  connectedCallback() {
    this.restart();
  }

  disconnectedCallback() {
    this.stop();
  }

  attributeChangedCallback(name: string, old: string | null, value: string | null) {
    if (!this.isConnected || old === value) return;
    if (name === 'metrics' || name === 'near-pct') this.draw();
    // Attributes set together (a framework's render) reconnect once.
    else if (!this.scheduled) {
      this.scheduled = true;
      queueMicrotask(() => {
        this.scheduled = false;
        this.restart();
      });
    }
  }

  private stop() {
    this.stops.forEach((s) => s());
    this.stops = [];
    void this.client?.dispose();
    this.client = null;
  }

  private fail(errors: GraphQLError[] | string) {
    const message = typeof errors === 'string' ? errors : (errors[0]?.message ?? 'unknown error');
    // Both subscriptions may fail for one reason: the page hears it once.
    if (message === this.error) return;
    this.error = message;
    this.dispatchEvent(new CustomEvent('tollgate-error', { detail: this.error, bubbles: true, composed: true }));
    this.draw();
  }

  private restart() {
    this.stop();
    this.summary = null;
    this.error = null;
    const token = this.getAttribute('token');
    if (!token) {
      this.fail('the token attribute is required');
      return;
    }
    const endpoint = this.getAttribute('endpoint') || DEFAULT_ENDPOINT;
    let url: URL;
    try {
      url = new URL(endpoint, location.href);
    } catch {
      this.fail(`the endpoint ${JSON.stringify(endpoint)} is not a URL`);
      return;
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') {
      this.fail(`the endpoint must be an http(s) URL, not ${JSON.stringify(endpoint)}`);
      return;
    }
    const id = this.getAttribute('organization') || null;
    let reached = false;
    const load = () =>
      // The current summary over the socket, then every change.
      this.stops.push(
        subscribe<WidgetUsageQuery, WidgetUsageQueryVariables>(
          client,
          WidgetUsageDocument,
          { id },
          (d) => {
            if (d.organization) {
              this.name = d.organization.name;
              this.update(d.organization.usage);
            }
          },
          (e) => this.fail(e),
        ),
      );
    const client = live(url.toString(), token, (status, reconnected, refused) => {
      if (status === 'live') reached = true;
      // Never reached (it keeps trying): say so once, until it connects. A refusal says why itself.
      if (status === 'offline' && !refused && !reached && !this.summary)
        this.fail(`cannot reach ${url.toString()}`);
      if (reconnected) load();
    });
    this.client = client;
    load();
    this.stops.push(
      subscribe<UsageUpdatedSubscription, UsageUpdatedSubscriptionVariables>(
        client,
        UsageUpdatedDocument,
        { id },
        (d) => this.update(d.usageUpdated),
        (e) => this.fail(e),
      ),
    );
    this.draw();
  }

  private update(summary: SummaryFragment) {
    this.summary = summary;
    this.error = null;
    this.dispatchEvent(new CustomEvent('tollgate-usage', { detail: summary, bubbles: true, composed: true }));
    this.draw();
  }

  private draw() {
    const only = (this.getAttribute('metrics') ?? '')
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean);
    const unknown = this.summary
      ? only.filter((code) => !this.summary?.metrics.some((m) => m.metric.code === code))
      : [];
    if (unknown.length && !this.error && unknown.join(',') !== this.reportedUnknown) {
      this.reportedUnknown = unknown.join(',');
      this.dispatchEvent(
        new CustomEvent('tollgate-error', {
          detail: `unknown metrics: ${unknown.join(', ')}`,
          bubbles: true,
          composed: true,
        }),
      );
    }
    const near = Number(this.getAttribute('near-pct'));
    const nearPct = Number.isFinite(near) && near > 0 ? near : NEAR_LIMIT_PCT;
    render(
      this.error ? (
        <p class="error" role="alert">
          {this.error}
        </p>
      ) : this.summary ? (
        <div>
          {this.name ? <p class="title">{this.name}</p> : null}
          <UsageBars metrics={this.summary.metrics} nearPct={nearPct} only={only} />
          {unknown.length ? <p class="empty">Unknown metrics: {unknown.join(', ')}</p> : null}
        </div>
      ) : (
        <p class="empty">Loading usage…</p>
      ),
      this.mount,
    );
  }
}

if (!customElements.get('tollgate-usage')) customElements.define('tollgate-usage', TollgateUsage);
