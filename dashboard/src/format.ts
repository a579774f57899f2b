// Formatting that never goes through floating point for amounts: Decimals arrive as exact strings.
import type { MetricBarFragment } from './generated/graphql';

/** "12345.5" -> "12,345.5"; anything that is not a plain decimal is shown as it came. */
export function decimal(s: string | null | undefined): string {
  if (s == null) return '∞';
  const m = /^(-?)(\d+)(\.\d+)?$/.exec(s);
  if (!m) return s;
  return `${m[1]}${m[2].replace(/\B(?=(\d{3})+(?!\d))/g, ',')}${m[3] ?? ''}`;
}

export function money(amount: string, currency: string): string {
  return `${decimal(amount)} ${currency.toUpperCase()}`;
}

export function pct(p: number | null | undefined): string {
  if (p == null) return '—';
  return `${p.toLocaleString('en-US', { maximumFractionDigits: 1 })}%`;
}

/** The near-limit threshold when nothing better is known (the server's default). */
export const NEAR_LIMIT_PCT = 80;

export type BarState = 'ok' | 'near' | 'exceeded' | 'overage' | 'unlimited';

type Stated = Pick<MetricBarFragment, 'allowance' | 'enforcement' | 'overageQuantity' | 'exceeded' | 'utilizationPct'>;

export function barState(m: Stated, nearPct = NEAR_LIMIT_PCT): BarState {
  if (m.allowance == null) return 'unlimited';
  if (m.enforcement === 'OVERAGE' && m.overageQuantity !== '0' && Number(m.overageQuantity) > 0) {
    return 'overage';
  }
  if (m.exceeded) return 'exceeded';
  if ((m.utilizationPct ?? 0) >= nearPct) return 'near';
  return 'ok';
}

export const STATE_LABEL: Record<BarState, string> = {
  ok: 'Within allowance',
  near: 'Near the limit',
  exceeded: 'Limit exceeded',
  overage: 'In overage',
  unlimited: 'Unlimited',
};

/** Days left in a period whose last day is `end` (YYYY-MM-DD, inclusive), today counted. */
export function daysLeft(end: string, now = new Date()): number {
  const [y, m, d] = end.split('-').map(Number);
  const last = Date.UTC(y, m - 1, d);
  const today = Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate());
  return Math.max(0, Math.round((last - today) / 86_400_000) + 1);
}

/** "2026-11" style label of a period start. */
export function monthLabel(date: string): string {
  const [y, m] = date.split('-').map(Number);
  return new Date(Date.UTC(y, m - 1, 1)).toLocaleString('en-US', {
    month: 'short',
    year: '2-digit',
    timeZone: 'UTC',
  });
}

export function when(iso: string): string {
  const d = new Date(iso);
  return d.toLocaleString('en-US', {
    month: 'short',
    day: 'numeric',
    hour: '2-digit',
    minute: '2-digit',
    second: '2-digit',
    hour12: false,
  });
}

export function titleCase(s: string): string {
  return s
    .toLowerCase()
    .split('_')
    .map((w) => w.charAt(0).toUpperCase() + w.slice(1))
    .join(' ');
}
