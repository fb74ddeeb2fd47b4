// $disconnect: forget the connection (the OnDisconnect function of AWS's simple WebSocket
// chat sample). The one change: the connection table is the Redis set TABLE_NAME on
// REDIS_URL, not a DynamoDB table.
import { createClient } from 'redis';

const { TABLE_NAME, REDIS_URL } = process.env;

const redis = createClient({ url: REDIS_URL });
redis.on('error', (err) => console.log(`Redis: ${err.message}`));
await redis.connect();

export const handler = async (event) => {
  try {
    await redis.sRem(TABLE_NAME, event.requestContext.connectionId);
  } catch (err) {
    return { statusCode: 500, body: 'Failed to disconnect: ' + JSON.stringify(err) };
  }

  return { statusCode: 200, body: 'Disconnected.' };
};
