# GET /v1/customers/{id} latency against a running instance: python3 benches/get_latency.py HOST:PORT N CUSTOMERS
# (random ids c0000000.. like `strata gen`, one connection per request, 4 ms apart).
import http.client, random, time, sys
host, port = sys.argv[1].split(':'); n = int(sys.argv[2]); customers = int(sys.argv[3])
random.seed(7)
found, missing = [], []
for i in range(n):
    cid = random.randrange(customers)
    t = time.perf_counter()
    c = http.client.HTTPConnection(host, int(port), timeout=5)
    c.request("GET", f"/v1/customers/c{cid:07d}")
    r = c.getresponse(); r.read(); c.close()
    d = (time.perf_counter() - t) * 1e3
    (found if r.status == 200 else missing).append(d)
    time.sleep(0.004)
def pct(v):
    v = sorted(v); 
    return f"p50 {v[len(v)//2]:.2f} ms, p99 {v[int(len(v)*0.99)]:.2f} ms, max {v[-1]:.2f} ms over {len(v)}" if v else "none"
print("found:", pct(found)); print("not found:", pct(missing))
