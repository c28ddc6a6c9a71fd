-- wrk script: POST /v1/reservations for the rows of the plan file $PLAN
-- (`national_id,tracking_code,caravan_id` a line); with $THREADS wrk threads, thread t sends
-- rows t, t + THREADS, t + 2 THREADS, ... Past the end of the plan it starts again, and the
-- repeats are refused (409): the caller checks that wrk saw no non-2xx answer.
local threads = 0

function setup(thread)
  thread:set("id", threads)
  threads = threads + 1
end

function init(args)
  plan = {}
  for line in io.lines(os.getenv("PLAN")) do
    local national_id, tracking_code, caravan_id = line:match("([^,]+),([^,]+),([^,]+)")
    plan[#plan + 1] = '{"national_id":"' .. national_id .. '","tracking_code":"' ..
      tracking_code .. '","caravan_id":"' .. caravan_id .. '"}'
  end
  sent = 0
  stride = tonumber(os.getenv("THREADS"))
end

function request()
  local row = id + stride * sent
  sent = sent + 1
  return wrk.format("POST", "/v1/reservations",
    { ["Content-Type"] = "application/json" }, plan[(row % #plan) + 1])
end
