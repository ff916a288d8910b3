-- Entry point of the headless Neovim tests: loads the plugin from this checkout, runs every spec, prints the totals.

local repo = assert(vim.env.SANDLINK_TEST_REPO, 'SANDLINK_TEST_REPO must name the repository root')
vim.opt.runtimepath:prepend(repo .. '/neovim-plugin')
package.path = repo .. '/tests/neovim/?.lua;' .. package.path
-- Messages from vim.notify and :echo must not wait for a key press in a headless run.
vim.opt.more = false
vim.opt.swapfile = false

local harness = require('harness')
-- Notifications go to the test log on lines of their own instead of the message area.
vim.notify = function(message, level)
  harness.write_line('     notify(' .. tostring(level) .. '): ' .. tostring(message):gsub('\n', '\n     '))
end
harness.write_line('Neovim ' .. tostring(vim.version().major) .. '.' .. tostring(vim.version().minor) .. '.'
  .. tostring(vim.version().patch))

-- Records every use of a deprecated Neovim function together with who called it, for the deprecation spec.
_G.sandlink_test_deprecations = {}
if vim.deprecate then
  local original_deprecate = vim.deprecate
  vim.deprecate = function(name, ...)
    table.insert(_G.sandlink_test_deprecations, { name = name, traceback = debug.traceback('', 2) })
    return original_deprecate(name, ...)
  end
end

local specs = vim.split(vim.env.SANDLINK_TEST_SPECS or 'unit_spec,protocol_spec,e2e_spec,deprecation_spec', ',', { plain = true })
for _, spec in ipairs(specs) do
  local ok, err = pcall(dofile, repo .. '/tests/neovim/' .. spec .. '.lua')
  if not ok then
    harness.test(spec .. '_should_load', function()
      error(err)
    end)
  end
end

local failed = harness.run_all()
harness.write_line(string.format('%d passed, %d failed', harness.passed, harness.failed))
-- The server is stopped first so that its sandboxes are cleaned up before Neovim exits.
local get_clients = vim.lsp.get_clients or vim.lsp.get_active_clients
for _, client in pairs(get_clients()) do
  if vim.fn.has('nvim-0.11') == 1 then
    client:stop()
  else
    client.stop()
  end
end
vim.wait(2000, function()
  return #get_clients() == 0
end, 50)
if failed > 0 then
  vim.cmd('cquit 1')
else
  vim.cmd('qall!')
end
