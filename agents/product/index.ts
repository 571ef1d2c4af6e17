// The Product agent. Owns `feature_requests`, `usage_metrics` and
// `beta_programs`.
//
// Messages:
// - `usage_report` `{active_users, feature_requests}`: records usage and
//   requests.
// - `expansion_signal` `{reason}`: Product thinks the customer is ready to
//   expand, which would change `deal_stage`. That field is Sales's, so
//   Product does not write it: it hands the change to Sales with
//   `coord.request-change`, and Sales applies or declines it.
//
// Built with `node agents/sdk-js/build.mjs agents/product/index.ts OUT.wasm`.
import { HostError, Refused, Write, commit, defineHandler, describe, fail, get, json, refString, requestChange, stringify, text, warn } from 'concord-agent';

export const handler = defineHandler((message) => {
  const target = message.entity ?? fail('product needs an entity, such as customer/acme');
  const shown = refString(target);
  const body = message.bodyJson();
  switch (message.kind) {
    case 'usage_report': {
      // As serde_json renders `body["active_users"]`: JSON text, `null` when absent.
      const activeUsers = stringify(body.active_users ?? null);
      for (let attempt = 1; attempt <= 3; attempt++) {
        let customer;
        try {
          customer = get(target);
        } catch (e) {
          if (e instanceof HostError) fail(e.message);
          throw e;
        }
        if (customer === undefined) fail(`${shown} does not exist`);
        const usage = { active_users: body.active_users ?? null };
        const requests = body.feature_requests === undefined ? [] : body.feature_requests;
        const w = Write.update(customer).set('usage_metrics', json(usage)).set('feature_requests', json(requests));
        const why = `usage report: ${activeUsers} active users`;
        try {
          const v = commit([w], why);
          return `${why} (${shown} version ${v[0]})`;
        } catch (e) {
          if (!(e instanceof Refused)) throw e;
          if (e.kind === 'deferred' || e.kind === 'denied') return `usage not recorded now: ${describe(e)}`;
          if (e.kind === 'conflict' && attempt < 3) {
            warn(describe(e));
            continue;
          }
          fail(describe(e));
        }
      }
      fail(`${shown} kept changing; nothing recorded`);
    }
    case 'expansion_signal': {
      const reason = typeof body.reason === 'string' ? body.reason : 'usage is growing';
      try {
        const id = requestChange('sales', target, { deal_stage: text('expansion_candidate') }, `expansion signal: ${reason}`);
        return `asked sales to move ${shown} to expansion_candidate (change request ${id})`;
      } catch (e) {
        if (e instanceof Refused) fail(describe(e));
        throw e;
      }
    }
    default:
      fail(`product does not handle \`${message.kind}\` messages (it handles usage_report, expansion_signal)`);
  }
});
