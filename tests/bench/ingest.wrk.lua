-- POST a ONE_BY_ONE profile CREATE with a fresh envelope id per request (no duplicates).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Authorization"] = "bench-secret"
local counter = 0
local thread_tag = tostring(math.random(1, 1e9))
request = function()
  counter = counter + 1
  local body = string.format(
    '{"id":"%s-%d","tableType":"PROFILE_TABLE","tableId":"%d","fields":["emailAddress"],' ..
    '"eventType":"DATA","triggerType":null,"operation":"CREATE",' ..
    '"data":{"profileId":%d,"emailAddress":"p%d@example.be","firstName":"Bench"}}',
    thread_tag, counter, 16 + counter % 20, counter, counter)
  return wrk.format(nil, nil, nil, body)
end
