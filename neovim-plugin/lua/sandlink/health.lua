-- `:checkhealth sandlink`: Neovim version, the server binary, the running client, its drivers and their credentials, the keychain.

local health_check = {}

-- vim.health.start/ok/... exist from 0.10 (report_* deprecated there); 0.7 has only require('health').report_*.
local function reporter()
  local health = vim.health or require('health')
  return {
    start = health.start or health.report_start,
    ok = health.ok or health.report_ok,
    info = health.info or health.report_info,
    warn = health.warn or health.report_warn,
    error = health.error or health.report_error,
  }
end

function health_check.check()
  local report = reporter()
  local config = require('sandlink.config')
  local state = require('sandlink.state')

  report.start('sandlink: Neovim')
  if vim.fn.has('nvim-0.7') == 1 then
    report.ok('Neovim ' .. tostring(vim.version().major) .. '.' .. tostring(vim.version().minor) .. ' is supported')
  else
    report.error('sandlink needs Neovim 0.7 or later')
  end
  if vim.ui and vim.ui.open then
    report.ok('previews open with vim.ui.open')
  else
    report.info('this Neovim has no vim.ui.open: preview URLs are shown and copied to the clipboard instead')
  end

  report.start('sandlink: server binary')
  local command = config.server_command()
  local executable = command[1]
  if vim.fn.executable(executable) == 1 then
    report.ok('found ' .. vim.fn.exepath(executable))
    local version_output = vim.fn.system({ executable, '--version' })
    if vim.v.shell_error == 0 then
      report.ok('version: ' .. vim.trim(version_output))
    else
      report.warn('`' .. executable .. ' --version` failed: ' .. vim.trim(version_output))
    end
  else
    report.error('`' .. executable .. '` is not executable', {
      'install sandlink and put it on PATH',
      'or set server_path in require("sandlink").setup({ server_path = "/path/to/sandlink" })',
      'or set the SANDLINK_SERVER environment variable',
    })
  end

  report.start('sandlink: client')
  if not require('sandlink').setup_called then
    report.warn('require("sandlink").setup() has not been called')
    return
  end
  local any_workspace = false
  for root_dir, workspace in pairs(state.workspaces) do
    any_workspace = true
    if workspace.stopped then
      report.error('the server for ' .. root_dir .. ' is not running', { ':lua require("sandlink").setup() restarts it' })
    elseif workspace.ready then
      report.ok('client ' .. tostring(workspace.client_id) .. ' serves ' .. root_dir .. ': ' .. state.statusline(workspace))
    else
      report.warn('the server for ' .. root_dir .. ' is still starting')
    end
    local held = require('sandlink.commands').held_back(workspace.session)
    if #held > 0 then
      report.info('not uploaded because they look like secrets: ' .. table.concat(held, ', ')
        .. ' (:Sandlink secrets allows one for this session; the profile\'s sync.allowSecrets for good)')
    end
    for _, driver in ipairs(workspace.drivers or {}) do
      if not driver.available then
        report.info('driver ' .. driver.id .. ' is unavailable: ' .. tostring(driver.detail or 'no detail given'))
      else
        local missing = health_check.missing_credentials(driver, workspace.profiles or {}, vim.env)
        if #missing == 0 then
          report.ok('driver ' .. driver.id .. ' is available')
        else
          report.warn('driver ' .. driver.id .. ' is reachable but has no ' .. table.concat(missing, ', '),
            health_check.credential_advice(driver))
        end
      end
    end
  end
  if not any_workspace then
    report.warn('no workspace has a sandlink client')
  end

  report.start('sandlink: keychain')
  if (vim.env.DBUS_SESSION_BUS_ADDRESS or '') ~= '' then
    report.ok('a D-Bus session bus is set (' .. vim.env.DBUS_SESSION_BUS_ADDRESS .. '): credentials can be kept in the Secret Service')
  elseif vim.fn.has('mac') == 1 or vim.fn.has('win32') == 1 then
    report.ok('credentials are kept in the system keychain')
  else
    report.warn('no D-Bus session bus (DBUS_SESSION_BUS_ADDRESS is empty): the OS keychain is out of reach', {
      'give cloud drivers their keys through environment variables (E2B_API_KEY, ...) instead',
      'or start a session bus and a Secret Service (gnome-keyring-daemon, KeePassXC)',
    })
  end
end

-- The descriptions of the driver's required credentials found neither in the environment the server inherits from
-- Neovim nor with any profile of that driver (`hasCredentials`: stored in the keychain or in its variable).
function health_check.missing_credentials(driver, profiles, environment)
  local missing = {}
  for _, credential in ipairs(driver.credentials or {}) do
    local found = credential.required == false or (environment[credential.envVar] or '') ~= ''
    for _, profile in ipairs(profiles) do
      found = found or (profile.driver == driver.id and profile.hasCredentials == true)
    end
    if not found then
      table.insert(missing, tostring(credential.description) .. ' (' .. tostring(credential.envVar) .. ')')
    end
  end
  return missing
end

function health_check.credential_advice(driver)
  local advice = {}
  for _, credential in ipairs(driver.credentials or {}) do
    table.insert(advice, 'set ' .. tostring(credential.envVar) .. ' in the environment Neovim starts from')
    table.insert(advice, 'or save a profile (:Sandlink profiles, `sandlink profile save NAME --driver ' .. driver.id
      .. '`) and store the key in the keychain: `sandlink profile set-credential NAME ' .. tostring(credential.key) .. '`')
  end
  return advice
end

return health_check
