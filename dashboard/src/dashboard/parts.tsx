// Small pieces the views share: sections, the live indicator, the alerts feed, the history chart.
import type { ComponentChildren } from 'preact';
import type { AlertFragment } from '../generated/graphql';
import type { Status } from '../api';
import { decimal, monthLabel, pct, titleCase, when } from '../format';

export function Section({
  id,
  title,
  children,
  wide,
}: {
  id: string;
  title: string;
  children: ComponentChildren;
  wide?: boolean;
}) {
  return (
    <section class={wide ? 'card card--wide' : 'card'} aria-labelledby={`${id}-title`} id={id}>
      <h2 id={`${id}-title`}>{title}</h2>
      {children}
    </section>
  );
}

const STATUS_TEXT: Record<Status, string> = {
  connecting: 'Connecting',
  live: 'Live',
  offline: 'Reconnecting',
};

/** Fixed width whatever it says, so the header never moves. */
export function LiveBadge({ status }: { status: Status }) {
  return (
    <span class={`live live--${status}`} role="status" data-status={status}>
      <span class="live__dot" aria-hidden="true" />
      {STATUS_TEXT[status]}
    </span>
  );
}

const KIND_CLASS: Record<AlertFragment['kind'], string> = {
  NEAR_LIMIT: 'near',
  LIMIT_EXCEEDED: 'exceeded',
  OVERAGE_STARTED: 'overage',
};

/** Newest first, in a box of fixed height that scrolls, so a new alert moves nothing outside it. */
export function AlertsFeed({
  alerts,
  showOrg,
  orgLink,
}: {
  alerts: AlertFragment[];
  showOrg?: boolean;
  orgLink?: (id: string) => string;
}) {
  if (!alerts.length) {
    return (
      <div class="feed feed--empty" data-testid="alerts">
        <p class="muted">No alerts yet. New ones appear here as they are raised.</p>
      </div>
    );
  }
  return (
    <div class="feed" tabIndex={0} aria-label="Alerts, newest first" data-testid="alerts">
      <ol aria-live="polite" aria-relevant="additions">
        {alerts.map((a) => (
          <li key={a.id} class={`alert alert--${KIND_CLASS[a.kind]}`} data-alert-id={a.id} data-kind={a.kind}>
            <span class="alert__kind">{titleCase(a.kind)}</span>
            <span class="alert__what">
              {showOrg ? (
                orgLink ? (
                  <a href={orgLink(a.organization.id)}>{a.organization.name}</a>
                ) : (
                  a.organization.name
                )
              ) : null}
              {showOrg ? ' · ' : null}
              {a.metric.name}: {decimal(a.used)} of {decimal(a.allowance)} ({pct(a.utilizationPct)})
            </span>
            <time class="alert__when" dateTime={a.createdAt}>
              {when(a.createdAt)}
            </time>
          </li>
        ))}
      </ol>
    </div>
  );
}

export interface HistoryPoint {
  periodStart: string;
  used: string;
  allowance: string | null;
  utilizationPct: number | null;
}

/**
 * The last periods of one metric as columns (used), with the allowance as a line; the columns keep
 * their size whatever the values, so a live update only changes their heights.
 */
export function HistoryChart({ name, unit, points }: { name: string; unit: string; points: HistoryPoint[] }) {
  const W = 240;
  const H = 80;
  const values = points.map((p) => Number(p.used));
  const limits = points.map((p) => (p.allowance == null ? 0 : Number(p.allowance)));
  const top = Math.max(1, ...values, ...limits);
  const step = W / Math.max(1, points.length);
  const y = (v: number) => H - (v / top) * (H - 4);
  const latest = points[points.length - 1];
  return (
    <figure class="chart">
      <figcaption>
        <span class="chart__name">{name}</span>
        <span class="chart__latest">{latest ? `${decimal(latest.used)} ${unit}` : '—'}</span>
      </figcaption>
      <svg viewBox={`0 0 ${W} ${H + 14}`} role="img" aria-label={`${name}, the last ${points.length} periods`}>
        {points.map((p, i) => {
          const v = Number(p.used);
          const over = p.allowance != null && v > Number(p.allowance);
          return (
            <g key={p.periodStart}>
              <rect
                x={i * step + 2}
                y={y(v)}
                width={step - 4}
                height={H - y(v)}
                class={over ? 'chart__col chart__col--over' : 'chart__col'}
              >
                <title>
                  {monthLabel(p.periodStart)}: {decimal(p.used)}
                  {p.allowance != null ? ` of ${decimal(p.allowance)}` : ''} {unit}
                </title>
              </rect>
              {p.allowance != null ? (
                <line x1={i * step} x2={(i + 1) * step} y1={y(Number(p.allowance))} y2={y(Number(p.allowance))} class="chart__limit" />
              ) : null}
              {/* Every third period from the latest; the latest ends at the right edge. */}
              {(points.length - 1 - i) % 3 === 0 ? (
                <text
                  x={i === points.length - 1 ? W : i * step + step / 2}
                  y={H + 12}
                  class="chart__label"
                  text-anchor={i === points.length - 1 ? 'end' : 'middle'}
                >
                  {monthLabel(p.periodStart)}
                </text>
              ) : null}
            </g>
          );
        })}
      </svg>
    </figure>
  );
}

export function Notice({ children, tone }: { children: ComponentChildren; tone?: 'error' }) {
  return (
    <p class={tone === 'error' ? 'notice notice--error' : 'notice'} role={tone === 'error' ? 'alert' : undefined}>
      {children}
    </p>
  );
}
