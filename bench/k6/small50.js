// The bench's small-50 workload (bench/scenarios.py) for k6: 50 virtual users, each on
// its own keep-alive connection, GET /small as fast as answers come back, every answer
// checked to be 200 with the 100-byte body.  docs/deploy.md, "k6".
//
//   k6 run -e TARGET=http://127.0.0.1:18090 -e DURATION=30s bench/k6/small50.js
//
// TARGET is the gateway (python -m bench starts one in front of nginx on /small).
import http from "k6/http";
import { check } from "k6";

const TARGET = __ENV.TARGET || "http://127.0.0.1:18090";

export const options = {
  scenarios: {
    small50: {
      executor: "constant-vus",
      vus: 50,
      duration: __ENV.DURATION || "30s",
    },
  },
  discardResponseBodies: false,
  thresholds: {
    checks: ["rate>0.999"],
    http_req_failed: ["rate<0.001"],
  },
  summaryTrendStats: ["avg", "p(50)", "p(90)", "p(99)", "max"],
};

export default function () {
  const r = http.get(`${TARGET}/small`);
  check(r, {
    "status 200": (res) => res.status === 200,
    "100-byte body": (res) => res.body !== null && res.body.length === 100,
  });
}
