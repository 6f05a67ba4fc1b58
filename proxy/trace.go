package proxy

import (
	"net/http"
	"time"

	"github.com/innovartx/deskgate/metrics"
	"github.com/innovartx/deskgate/tracing"
)

// endTrace counts a recorded request (SPEC §11): its durations carry its
// trace id as an exemplar, and its spans end with what the log says of
// it. Only sampled requests come here; the others are counted by
// [Gateway.accessLog] without any of this.
func (g *Gateway) endTrace(st *state, r *http.Request, status int, elapsed time.Duration) {
	id := st.trace.TraceID()
	st.route.ObserveTraced(r.Method, status, elapsed.Seconds(), id)
	o := tracing.Outcome{
		Method:        r.Method,
		Path:          r.URL.Path,
		RequestID:     st.requestID,
		Status:        status,
		Code:          string(st.code),
		KeyPrefix:     st.keyPrefix,
		AppID:         st.appID,
		End:           st.start.Add(elapsed),
		UpstreamError: st.upstreamKind,
	}
	if name := st.route.Name(); name != metrics.Unmatched {
		o.Route = name
	}
	if st.ownReply {
		o.Cause = st.cause
	}
	if st.upstream > 0 && !st.ownReply {
		st.route.UpstreamTraced(st.upstream.Seconds(), id)
		o.UpstreamEnd = st.proxyStart.Add(st.upstream)
	}
	st.trace.End(&o)
}
