-- A small test runner for headless Neovim: named tests, assertions, waiting, and the closing "N passed, N failed" line.

local harness = { tests = {}, passed = 0, failed = 0, failures = {} }

local function write_line(text)
  io.stdout:write(text .. '\n')
  io.stdout:flush()
end
harness.write_line = write_line

function harness.test(name, body)
  table.insert(harness.tests, { name = name, body = body })
end

-- Waits with vim.wait so that LSP messages keep being processed; fails the test with `description` on timeout.
function harness.wait_for(description, timeout_ms, condition)
  local satisfied = vim.wait(timeout_ms, function()
    local ok, result = pcall(condition)
    return ok and result and true or false
  end, 20)
  if not satisfied then
    error('timed out after ' .. timeout_ms .. ' ms waiting for ' .. description, 2)
  end
end

function harness.assert_equal(expected, actual, what)
  if not vim.deep_equal(expected, actual) then
    error((what or 'value') .. ': expected ' .. vim.inspect(expected) .. ', got ' .. vim.inspect(actual), 2)
  end
end

function harness.assert_true(condition, what)
  if not condition then
    error('expected ' .. (what or 'condition') .. ' to hold', 2)
  end
end

function harness.assert_matches(pattern, text, what)
  if type(text) ~= 'string' or not text:find(pattern) then
    error((what or 'text') .. ': expected to match ' .. vim.inspect(pattern) .. ', got ' .. vim.inspect(text), 2)
  end
end

function harness.assert_contains(list, wanted, what)
  for _, item in ipairs(list or {}) do
    if item == wanted then
      return
    end
  end
  error((what or 'list') .. ': expected to contain ' .. vim.inspect(wanted) .. ', got ' .. vim.inspect(list), 2)
end

-- Captures vim.notify calls made while `body` runs or afterwards, until the returned stop function is called.
function harness.capture_notifications()
  local captured = {}
  local original_notify = vim.notify
  vim.notify = function(message, level)
    table.insert(captured, { message = tostring(message), level = level })
  end
  local function stop()
    vim.notify = original_notify
  end
  return captured, stop
end

function harness.find_notification(captured, pattern)
  for _, notification in ipairs(captured) do
    if notification.message:find(pattern) then
      return notification
    end
  end
  return nil
end

-- Runs the tests in order (later ones build on the session earlier ones made) and reports each one.
function harness.run_all()
  for _, test in ipairs(harness.tests) do
    local started = (vim.uv or vim.loop).hrtime()
    local ok, err = xpcall(test.body, debug.traceback)
    local elapsed_ms = math.floor(((vim.uv or vim.loop).hrtime() - started) / 1e6)
    if ok then
      harness.passed = harness.passed + 1
      write_line(string.format('ok   %s (%d ms)', test.name, elapsed_ms))
    else
      harness.failed = harness.failed + 1
      table.insert(harness.failures, test.name)
      write_line(string.format('FAIL %s (%d ms)\n     %s', test.name, elapsed_ms, tostring(err):gsub('\n', '\n     ')))
    end
  end
  return harness.failed
end

return harness
